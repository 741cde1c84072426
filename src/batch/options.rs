//! What an import run does: which stores it fills and how it treats rejected rows and changed
//! files.

use std::path::PathBuf;

use crate::model::ParseOptions;
use crate::store::warehouse::LoadedInto;

/// Which store(s) an import fills: defined with the settings (`import.target`), whose value it is.
pub use crate::config::Target;

impl Target {
    /// The single stores this target fills, in load order.
    pub(crate) fn stores(self) -> &'static [LoadedInto] {
        match self {
            Target::Warehouse => &[LoadedInto::Warehouse],
            Target::Operational => &[LoadedInto::Operational],
            Target::Both => &[LoadedInto::Warehouse, LoadedInto::Operational],
        }
    }
}

/// How an import run behaves.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub target: Target,
    /// Load files whose content changed since they were loaded, replacing their old rows.
    pub reload: bool,
    /// A file with more rejected rows than this share of its rows loads nothing.
    pub max_reject_ratio: f64,
    pub parse: ParseOptions,
    /// Folder of the reject files.
    pub reject_dir: PathBuf,
    /// Parse and count only: write nothing but the reject files.
    pub dry_run: bool,
}

impl From<LoadedInto> for Target {
    fn from(into: LoadedInto) -> Self {
        match into {
            LoadedInto::Warehouse => Target::Warehouse,
            LoadedInto::Operational => Target::Operational,
        }
    }
}

impl ImportOptions {
    /// The options the settings give (`[import]`, reject folder under `data_dir`), without reload
    /// or dry run.
    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        let import = &settings.import;
        ImportOptions {
            target: import.target,
            reload: false,
            max_reject_ratio: import.max_reject_ratio,
            parse: ParseOptions {
                date_order: import.date_order,
                delimiter: None,
                request_key: None,
            },
            reject_dir: settings.data_dir.join(&import.reject_dir),
            dry_run: false,
        }
    }
}
