//! `shopstream serve`: the pipeline and its HTTP API, until SIGTERM or SIGINT.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use crate::actors::pipeline::Pipeline;
use crate::actors::progress::Progress;
use crate::app::{start_pipeline, Backends, DataDirLock};
use crate::config::Settings;
use crate::web::access::RateLimits;
use crate::web::{AppState, AppendHealth, Limits};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Data folder of the embedded backends (overrides `data_dir`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Port to listen on (overrides `server.port`; 0 picks a free one and prints it).
    #[arg(long)]
    pub port: Option<u16>,
}

pub fn run(config: Option<&Path>, args: Args) -> anyhow::Result<()> {
    let mut settings = super::load_settings(config)?;
    if let Some(dir) = args.data_dir {
        settings.data_dir = dir;
    }
    if let Some(port) = args.port {
        settings.server.port = port;
        // `--port` may now equal `server.ops_port`.
        settings.server.validate()?;
    }
    super::init_logging(&settings);
    crate::metrics::init();
    actix_web::rt::System::new().block_on(async move {
        let running = Running::start(&settings).await?;
        let signal = wait_for_signal().await?;
        tracing::info!(
            signal,
            "Shutting down: no new requests, finishing the ones in flight, flushing every sink."
        );
        running.stop(&settings).await;
        Ok(())
    })
}

/// The keys `serve` takes: every configured key, except the demo keys when the server listens
/// beyond loopback (a key printed in the README must never open a reachable server). What is
/// left out, and a server no one can read from, are logged.
fn served_keys(settings: &Settings) -> crate::config::AuthConfig {
    let mut auth = settings.auth.clone();
    let loopback = settings.server.bind == "localhost"
        || settings
            .server
            .bind
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        let dropped = auth.drop_demo_keys();
        if !dropped.is_empty() {
            tracing::warn!(
                bind = %settings.server.bind,
                keys = %dropped.join(", "),
                "Demo keys are ignored off loopback: set real keys in the environment \
                 (SHOPSTREAM__AUTH__STORES__<STORE_ID>, SHOPSTREAM__AUTH__READERS__<NAME>)."
            );
        }
    }
    if auth.stores.is_empty() {
        tracing::warn!("No store key is configured: every ingest request will be answered 401.");
    }
    if auth.readers.is_empty() {
        tracing::warn!(
            "No reader key is configured: look-ups, sales figures, the status and the dashboard's \
             data need one (SHOPSTREAM__AUTH__READERS__<NAME>=<key>)."
        );
    }
    auth
}

/// A running pipeline and HTTP server.
pub struct Running {
    /// The API's server, and the ops server's after it when `server.ops_port` is set.
    pub servers: Vec<actix_web::dev::ServerHandle>,
    pub server_tasks: Vec<actix_web::rt::task::JoinHandle<std::io::Result<()>>>,
    pub pipeline: Arc<Pipeline>,
    pub state: Arc<AppState>,
    pub addrs: Vec<std::net::SocketAddr>,
    /// Stops the bulk-import watcher (`import.watch`), if it runs.
    import_stop: tokio::sync::watch::Sender<bool>,
    /// This process's claim on `data_dir`, held until it exits.
    _data_dir_lock: Option<DataDirLock>,
}

impl Running {
    /// Opens the backends, starts the actors and the HTTP server, and prints where it listens
    /// (`shopstream listening on http://ADDR`, a line tests and scripts wait for).
    ///
    /// # Errors
    /// Another process running on the same `data_dir` ([`DataDirLock`]), a backend that cannot
    /// be opened or an address that cannot be bound.
    pub async fn start(settings: &Settings) -> anyhow::Result<Running> {
        let data_dir_lock = DataDirLock::acquire(settings, "serve")?;
        let backends = Backends::open(settings).await?;
        let progress = Arc::new(Progress::default());
        let sinks = backends.sinks(settings);
        let pipeline = start_pipeline(settings, &backends, sinks.clone(), progress.clone()).await?;
        let auth = served_keys(settings);
        let state = Arc::new(AppState {
            instance: backends.instance.clone(),
            stream: backends.stream.clone(),
            line_index: backends.line_index.clone(),
            operational: backends.operational.clone(),
            warehouse: backends.warehouse.clone(),
            sinks,
            dead_letter_store: backends.dead_letter.clone(),
            progress,
            auth: auth.clone(),
            rate_limits: RateLimits::new(&settings.rate_limits, &auth),
            limits: Limits::from_settings(settings),
            inflight_appends: AtomicUsize::new(0),
            appends: AppendHealth::default(),
            ingest_permits: Arc::new(tokio::sync::Semaphore::new(
                settings.server.max_inflight_ingest,
            )),
            bodies: crate::web::admission::BodyGate::new(&settings.server),
        });
        let servers = crate::web::server(state.clone(), settings)?;
        let addrs = servers.addrs;
        let mut handles = vec![servers.api.handle()];
        let mut tasks = vec![actix_web::rt::spawn(servers.api)];
        let import_stop = start_import_watcher(settings).await?;
        for addr in &addrs {
            tracing::info!(%addr, data_dir = %settings.data_dir.display(), "shopstream is listening.");
            out!("shopstream listening on http://{addr}");
        }
        if let Some((ops, ops_addrs)) = servers.ops {
            handles.push(ops.handle());
            tasks.push(actix_web::rt::spawn(ops));
            for addr in &ops_addrs {
                tracing::info!(%addr, "Metrics and health are served on the ops port.");
                out!("shopstream ops (/metrics, /health) on http://{addr}");
            }
        }
        Ok(Running {
            servers: handles,
            server_tasks: tasks,
            pipeline,
            state,
            addrs,
            import_stop,
            _data_dir_lock: data_dir_lock,
        })
    }

    /// Stops taking requests, lets the ones in flight finish, then has every sink write what it
    /// holds and checkpoint, all within `server.shutdown_deadline`.
    pub async fn stop(self, settings: &Settings) {
        let started = Instant::now();
        let deadline = settings.server.shutdown_deadline;
        self.import_stop.send_replace(true);
        // The API first: metrics and health stay up while its requests finish.
        for server in &self.servers {
            server.stop(true).await;
        }
        for task in self.server_tasks {
            let _ = task.await;
        }
        let left = deadline.saturating_sub(started.elapsed());
        if self.pipeline.shutdown(left).await {
            tracing::info!(
                millis = started.elapsed().as_millis() as u64,
                "Every sink is flushed and checkpointed; bye."
            );
        } else {
            tracing::warn!(
                deadline = ?deadline,
                "The shutdown deadline passed before every sink finished; what was not checkpointed is read again at the next start."
            );
        }
    }
}

/// Starts the crawler of `import.watch` (bulk files loaded into the warehouse on an interval,
/// the ledger preventing double loads) when any source is configured; returns its stop switch.
async fn start_import_watcher(
    settings: &Settings,
) -> anyhow::Result<tokio::sync::watch::Sender<bool>> {
    use crate::batch::s3::s3_client;
    use crate::batch::{watch, ImportOptions, Importer};
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    if settings.import.watch.is_empty() {
        return Ok(stop);
    }
    let mut importer = Importer::open(settings, ImportOptions::from_settings(settings))
        .context("cannot start the import watcher (import.watch)")?;
    if settings.import.watch.iter().any(|s| s.starts_with("s3://")) {
        importer = importer.with_s3(s3_client(&settings.aws).await);
    }
    let sources = settings.import.watch.clone();
    let interval = settings.import.interval;
    tracing::info!(?sources, ?interval, "Watching for bulk files to import.");
    actix_web::rt::spawn(watch(Arc::new(importer), sources, interval, async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    Ok(stop)
}

/// Waits for SIGTERM (ECS stopping the task) or SIGINT (Ctrl-C) and names it.
pub async fn wait_for_signal() -> anyhow::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
        tokio::select! {
            _ = term.recv() => Ok("SIGTERM"),
            _ = int.recv() => Ok("SIGINT"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .context("cannot listen for Ctrl-C")?;
        Ok("Ctrl-C")
    }
}
