//! The OpenAPI document against the real binary: `GET /openapi.json` is open and is the checked-in
//! document; it names every route the server registers and no other (the route table of
//! `shopstream::web`, which is built from the same lines as the routes); every documented route
//! answers on the server and undocumented methods of its paths do not; and the answers of the main
//! routes, successes and errors, have a status the document lists for them and a body its schema
//! for that status accepts.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

const METHODS: &[&str] = &["get", "post", "put", "delete", "patch"];

fn document(server: &Server) -> Value {
    let response = anonymous_client()
        .get(server.url("/openapi.json"))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200, "/openapi.json is open");
    let served: Value = response.json().unwrap();
    let checked_in: Value = serde_json::from_str(shopstream::web::openapi::DOCUMENT).unwrap();
    assert_eq!(
        served, checked_in,
        "the server serves the checked-in document"
    );
    assert_eq!(served["openapi"], "3.1.0");
    served
}

/// (method, path) of every operation in the document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            assert!(METHODS.contains(&method.as_str()), "{method} {path}");
            ops.insert((method.clone(), path.clone()));
        }
    }
    ops
}

/// A documented path with its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{invoice_no}", "536365")
        .replace("{customer_id}", "17850")
}

#[test]
fn the_document_names_every_route_and_only_those() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), 0, "");
    let doc = document(&server);
    let ops = documented(&doc);
    let registered: BTreeSet<(String, String)> = shopstream::web::route_table()
        .into_iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(
        ops.difference(&registered).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not registered"
    );
    assert_eq!(
        registered.difference(&ops).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "registered but not documented"
    );

    // The binary answers what the document says, and only that: the router's own "no such
    // route" is a 404 with an empty body (an API 404 has a JSON body naming what is missing).
    let anonymous = anonymous_client();
    let paths: BTreeSet<&String> = ops.iter().map(|(_, p)| p).collect();
    for path in paths {
        for method in METHODS {
            let response = anonymous
                .request(
                    method.to_uppercase().parse().unwrap(),
                    server.url(&concrete(path)),
                )
                .send()
                .unwrap();
            let status = response.status().as_u16();
            let routed = !(status == 405 || status == 404 && response.text().unwrap().is_empty());
            let is_documented = ops.contains(&(method.to_string(), path.clone()));
            assert_eq!(
                routed, is_documented,
                "{method} {path} answered {status}; documented: {is_documented}"
            );
        }
    }
}

#[test]
fn real_answers_validate_against_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), 0, "");
    let doc = document(&server);
    let store = |request: reqwest::blocking::RequestBuilder| request.bearer_auth(DEMO_KEY);
    let http = client();
    let csv = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n\
               536365,85123A,WHITE HANGING HEART,6,12/1/2010 8:26,2.55,17850,United Kingdom\n\
               536365,71053,WHITE METAL LANTERN,6,12/1/2010 8:26,3.39,17850,United Kingdom\n\
               536365,BAD,NO PRICE,6,12/1/2010 8:26,,17850,United Kingdom\n";
    let ingest = |body: &str, content_type: &str, query: &str| {
        store(http.post(server.url(&format!("/v1/invoices{query}"))))
            .header("content-type", content_type)
            .body(body.to_owned())
            .send()
            .unwrap()
    };

    let mut checked = Vec::new();
    let mut check = |method: &str, path: &str, response: reqwest::blocking::Response| {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let retry_after = response.headers().get("retry-after").is_some();
        let text = response.text().unwrap();
        let answer = &doc["paths"][path][method]["responses"][status.to_string()];
        assert!(
            answer.is_object(),
            "{method} {path} answered {status}, which the document does not list: {text}"
        );
        let answer = resolve(&doc, answer);
        if matches!(status, 429 | 503) && answer["headers"]["Retry-After"].is_object() {
            assert!(retry_after, "{method} {path} {status} without Retry-After");
        }
        let media = content_type.split(';').next().unwrap().trim().to_owned();
        let schema = &answer["content"][&media]["schema"];
        assert!(
            schema.is_object(),
            "{method} {path} {status} answered {media}, which the document does not list"
        );
        if media == "application/json" {
            let body: Value = serde_json::from_str(&text).unwrap();
            if let Err(e) = validate(&doc, schema, &body, "$") {
                panic!("{method} {path} {status}: {e}\nbody: {text}");
            }
        }
        checked.push(format!("{method} {path} {status}"));
    };

    // Ingest: lines taken and one refused, the whole body refused, a type it cannot read, no key.
    check("post", "/v1/invoices", ingest(csv, "text/csv", ""));
    let ndjson = r#"{"InvoiceNo":"536366","StockCode":"22633","Quantity":6,"InvoiceDate":"12/1/2010 8:28","UnitPrice":1.85,"CustomerID":17850,"Country":"United Kingdom"}"#;
    check(
        "post",
        "/v1/invoices",
        ingest(ndjson, "application/x-ndjson", "?dry_run=true"),
    );
    check(
        "post",
        "/v1/invoices",
        ingest("[{\"InvoiceNo\":\"x\"}]", "application/json", ""),
    );
    check(
        "post",
        "/v1/invoices",
        ingest(csv, "text/csv", "?atomic=true"),
    );
    check("post", "/v1/invoices", ingest("{}", "image/png", ""));
    check("post", "/v1/invoices", ingest(csv, "text/csv", "?nope=1"));
    check(
        "post",
        "/v1/invoices",
        anonymous_client()
            .post(server.url("/v1/invoices"))
            .body(csv)
            .send()
            .unwrap(),
    );
    server.wait_caught_up(Duration::from_secs(60));

    let get = |path: &str| http.get(server.url(path)).send().unwrap();
    let routes = [
        ("/v1/invoices/{invoice_no}", "/v1/invoices/536365"),
        ("/v1/invoices/{invoice_no}", "/v1/invoices/999999"),
        (
            "/v1/customers/{customer_id}/invoices",
            "/v1/customers/17850/invoices?from=2010-12-01",
        ),
        (
            "/v1/customers/{customer_id}/invoices",
            "/v1/customers/abc/invoices",
        ),
        ("/v1/sales/summary", "/v1/sales/summary"),
        (
            "/v1/sales/summary",
            "/v1/sales/summary?from=2010-12-01&to=2010-12-31",
        ),
        ("/v1/sales/summary", "/v1/sales/summary?from=yesterday"),
        ("/v1/sales/customers", "/v1/sales/customers?limit=5"),
        ("/v1/sales/customers", "/v1/sales/customers?limit=0"),
        ("/v1/status", "/v1/status"),
        ("/health/live", "/health/live"),
        ("/health/ready", "/health/ready"),
        ("/metrics", "/metrics"),
        ("/openapi.json", "/openapi.json"),
        ("/", "/"),
    ];
    for (documented, concrete) in routes {
        check("get", documented, get(concrete));
    }
    // A store key on figures that span every store, and no key at all.
    check(
        "get",
        "/v1/sales/summary",
        store(http.get(server.url("/v1/sales/summary")))
            .send()
            .unwrap(),
    );
    check(
        "get",
        "/v1/status",
        anonymous_client()
            .get(server.url("/v1/status"))
            .send()
            .unwrap(),
    );
    let statuses: BTreeSet<&str> = checked
        .iter()
        .map(|c| c.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(
        statuses,
        BTreeSet::from(["200", "400", "401", "403", "404", "415", "422"]),
        "{checked:#?}"
    );
}

/// `value` with its `$ref` (to `#/...` in `doc`) followed.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str() {
        Some(pointer) => resolve(doc, doc.pointer(pointer.trim_start_matches('#')).unwrap()),
        None => value,
    }
}

/// Checks `value` against the JSON Schema keywords the document uses: `type` (one or several),
/// `properties`, `required`, `additionalProperties`, `items`, `prefixItems`, `minItems`,
/// `maxItems`, `enum`, `const`, `minimum`, `oneOf` and `$ref`.
fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().map(|t| t.as_str().unwrap()).collect(),
            other => return Err(format!("bad type keyword {other}")),
        };
        let fits = |t: &str| match t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => false,
        };
        if !types.iter().any(|t| fits(t)) {
            return Err(format!("{at}: {value} is not of type {types:?}"));
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            return Err(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    if let Some(expected) = schema.get("const") {
        if expected != value {
            return Err(format!("{at}: {value} is not {expected}"));
        }
    }
    if let (Some(min), Some(n)) = (
        schema.get("minimum").and_then(Value::as_f64),
        value.as_f64(),
    ) {
        if n < min {
            return Err(format!("{at}: {n} is below the minimum {min}"));
        }
    }
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        let fitting = options
            .iter()
            .filter(|o| validate(doc, o, value, at).is_ok())
            .count();
        if fitting != 1 {
            return Err(format!("{at}: {value} fits {fitting} of oneOf, not one"));
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = required.as_str().unwrap();
            if !object.contains_key(name) {
                return Err(format!("{at}: required field {name:?} is missing"));
            }
        }
        for (name, field) in object {
            let at = format!("{at}.{name}");
            match (
                properties.and_then(|p| p.get(name)),
                schema.get("additionalProperties"),
            ) {
                (Some(property), _) => validate(doc, property, field, &at)?,
                (None, Some(Value::Bool(false))) => {
                    return Err(format!("{at}: a field the document does not name"))
                }
                (None, Some(extra @ Value::Object(_))) => validate(doc, extra, field, &at)?,
                (None, _) => {}
            }
        }
    }
    if let Some(items) = value.as_array() {
        let count = |k: &str| schema.get(k).and_then(Value::as_u64);
        if count("minItems").is_some_and(|n| (items.len() as u64) < n)
            || count("maxItems").is_some_and(|n| (items.len() as u64) > n)
        {
            return Err(format!("{at}: {} items is out of bounds", items.len()));
        }
        let prefix = schema.get("prefixItems").and_then(Value::as_array);
        for (i, item) in items.iter().enumerate() {
            let at = format!("{at}[{i}]");
            match (prefix.and_then(|p| p.get(i)), schema.get("items")) {
                (Some(s), _) | (None, Some(s)) => validate(doc, s, item, &at)?,
                (None, None) => {}
            }
        }
    }
    Ok(())
}

#[test]
fn the_validator_refuses_what_the_document_does_not_allow() {
    let doc: Value = serde_json::from_str(shopstream::web::openapi::DOCUMENT).unwrap();
    let error = serde_json::json!({"$ref": "#/components/schemas/Error"});
    let ok = serde_json::json!({"error": "bad_input", "message": "m"});
    assert_eq!(validate(&doc, &error, &ok, "$"), Ok(()));
    for bad in [
        serde_json::json!({"message": "m"}),
        serde_json::json!({"error": "oops", "message": "m"}),
        serde_json::json!({"error": "bad_input", "message": 1}),
        serde_json::json!({"error": "bad_input", "message": "m", "extra": true}),
        serde_json::json!({"error": "bad_input", "message": "m", "rejected": [{"reason": "r"}]}),
    ] {
        assert!(validate(&doc, &error, &bad, "$").is_err(), "{bad}");
    }
    let pair = serde_json::json!({"$ref": "#/components/schemas/DayAmount"});
    assert!(validate(&doc, &pair, &serde_json::json!(["2010-12", "1.5"]), "$").is_ok());
    assert!(validate(&doc, &pair, &serde_json::json!(["2010-12", 1.5]), "$").is_err());
    assert!(validate(&doc, &pair, &serde_json::json!(["2010-12"]), "$").is_err());
}
