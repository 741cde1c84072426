//! Look-ups: invoices and customers from the operational store, sales figures from the warehouse.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{NaiveDate, NaiveDateTime};
use serde::Deserialize;

use super::error::ApiError;
use super::AppState;
use crate::config::ReadAccess;
use crate::store::operational::invoice_total;
use crate::store::warehouse::DayRange;

super::route_group! {
    get "/v1/invoices/{invoice_no}" => invoice,
    get "/v1/customers/{customer_id}/invoices" => customer_invoices,
    get "/v1/sales/summary" => sales_summary,
    get "/v1/sales/customers" => sales_customers,
}

async fn invoice(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let access = state.authorize_read(&req, "invoices")?;
    let invoice_no = path.into_inner();
    let not_found = || ApiError::NotFound {
        what: format!("invoice {invoice_no:?}"),
    };
    let mut invoice = state
        .operational
        .invoice(&invoice_no)
        .await?
        .ok_or_else(not_found)?;
    if let ReadAccess::OwnStore(store) = access {
        // A store sees the lines it sent; an invoice it sent none of does not exist for it.
        invoice.lines.retain(|l| *l.store_id == *store);
        if invoice.lines.is_empty() {
            return Err(not_found());
        }
        invoice.total = invoice_total(&invoice.lines)?;
    }
    Ok(HttpResponse::Ok().json(invoice))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Range {
    from: Option<String>,
    to: Option<String>,
}

/// `2011-01-31` (midnight) or `2011-01-31T08:26:00` / `2011-01-31 08:26:00`.
fn parse_bound(name: &str, value: Option<&str>) -> Result<Option<NaiveDateTime>, ApiError> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if let Ok(d) = NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0));
    }
    for format in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(v, format) {
            return Ok(Some(t));
        }
    }
    Err(ApiError::BadInput(format!(
        "query parameter {name}={v:?} is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS"
    )))
}

async fn customer_invoices(
    req: HttpRequest,
    path: web::Path<String>,
    range: web::Query<Range>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.authorize_read_all(&req, "customers' purchase histories")?;
    let raw = path.into_inner();
    let customer_id: u64 = raw.trim().parse().map_err(|_| {
        ApiError::BadInput(format!(
            "customer id {raw:?} is not a whole number (expected e.g. 17850)"
        ))
    })?;
    let from = parse_bound("from", range.from.as_deref())?;
    let to = parse_bound("to", range.to.as_deref())?;
    let invoices = state
        .operational
        .customer_invoices(customer_id, from, to)
        .await
        .map_err(ApiError::from)?;
    if invoices.is_empty() && from.is_none() && to.is_none() {
        return Err(ApiError::NotFound {
            what: format!("customer {customer_id}"),
        });
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "customer_id": customer_id,
        "invoices": invoices,
    })))
}

/// `from` / `to` of the sales figures: whole days, both inclusive.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SalesQuery {
    from: Option<String>,
    to: Option<String>,
    /// How many customers `/v1/sales/customers` lists (default 10, at most 1,000).
    limit: Option<String>,
}

/// Customers listed by `/v1/sales/customers` unless the caller says otherwise, and at most.
const DEFAULT_CUSTOMERS: usize = 10;
const MAX_CUSTOMERS: usize = 1_000;

impl SalesQuery {
    fn range(&self) -> Result<DayRange, ApiError> {
        let day = |name: &str, value: Option<&str>| -> Result<Option<NaiveDate>, ApiError> {
            match value.map(str::trim).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => NaiveDate::parse_from_str(v, "%Y-%m-%d")
                    .map(Some)
                    .map_err(|_| {
                        ApiError::BadInput(format!(
                        "query parameter {name}={v:?} is not a day: use YYYY-MM-DD, e.g. 2011-01-31"
                    ))
                    }),
            }
        };
        let range = DayRange {
            from: day("from", self.from.as_deref())?,
            to: day("to", self.to.as_deref())?,
        };
        if let (Some(from), Some(to)) = (range.from, range.to) {
            if from > to {
                return Err(ApiError::BadInput(format!(
                    "from={from} is after to={to}: the range is empty; swap them"
                )));
            }
        }
        Ok(range)
    }

    fn limit(&self) -> Result<usize, ApiError> {
        match self.limit.as_deref().map(str::trim) {
            None | Some("") => Ok(DEFAULT_CUSTOMERS),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_CUSTOMERS).contains(n))
                .ok_or_else(|| {
                    ApiError::BadInput(format!(
                        "query parameter limit={v:?} is not a whole number from 1 to {MAX_CUSTOMERS}"
                    ))
                }),
        }
    }
}

/// Said when the warehouse cannot be queried from here.
const NOT_QUERYABLE: &str =
    "sales figures (the warehouse backend, Firehose, cannot be queried from here; query Redshift)";

async fn sales_summary(
    req: HttpRequest,
    query: web::Query<SalesQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.authorize_read_all(&req, "sales figures")?;
    let range = query.range()?;
    match state.warehouse.summary_in(range).await {
        Ok(Some(summary)) => Ok(HttpResponse::Ok().json(summary)),
        Ok(None) => Err(ApiError::NotFound {
            what: NOT_QUERYABLE.into(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// `GET /v1/sales/customers?from=&to=&limit=`: the best customers by net revenue.
async fn sales_customers(
    req: HttpRequest,
    query: web::Query<SalesQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.authorize_read_all(&req, "sales figures")?;
    let (range, limit) = (query.range()?, query.limit()?);
    match state.warehouse.top_customers(range, limit).await {
        Ok(Some(customers)) => Ok(HttpResponse::Ok().json(serde_json::json!({
            "from": range.from,
            "to": range.to,
            "customers": customers,
        }))),
        Ok(None) => Err(ApiError::NotFound {
            what: NOT_QUERYABLE.into(),
        }),
        Err(e) => Err(e.into()),
    }
}
