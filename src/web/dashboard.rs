//! `GET /`: a one-page dashboard for people (sales figures, pipeline progress, invoice and
//! customer look-up), served from the binary; it reads the same JSON API as any client.

use actix_web::HttpResponse;

const PAGE: &str = include_str!("dashboard.html");

super::route_group! {
    get "/" => page,
}

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE)
}
