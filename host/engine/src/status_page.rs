//! The status page at `/` of the main listener: pipelines and their health, open problems,
//! dead letters (replay and purge for an admin token), recent messages with their trace, and
//! per-host graphs of the metric history over 24 hours, 7 days or 30 days.
//!
//! The page is three static files compiled into the binary (`status_page/`: HTML, CSS, and
//! plain JavaScript drawing SVG); nothing is fetched from elsewhere. It holds no data of its
//! own: the browser asks the operator for a token of `--api-tokens` and reads the admin API
//! with it, so the page shows nothing to whoever has no token, and an admin token is what
//! replays. The headers forbid anything but this origin's scripts, styles and API
//! (`Content-Security-Policy`), framing, and MIME sniffing.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("status_page/index.html");
const APP_JS: &str = include_str!("status_page/app.js");
const APP_CSS: &str = include_str!("status_page/app.css");

/// What every answer of the page carries.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// `/`, `/assets/app.js` and `/assets/app.css`.
pub fn router() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/assets/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            // A new binary serves new files: revalidate rather than keep an old script.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn the_page_and_its_assets_are_served_with_a_strict_policy() {
        for (path, kind) in [
            ("/", "text/html"),
            ("/assets/app.js", "text/javascript"),
            ("/assets/app.css", "text/css"),
        ] {
            let response = router()
                .oneshot(Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let headers = response.headers();
            assert!(headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(kind));
            assert!(headers[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("script-src 'self'"));
        }
    }

    /// The page loads nothing from elsewhere and runs no inline script (the policy would
    /// block it, and the page would be blank).
    #[test]
    fn the_page_refers_only_to_its_own_assets() {
        for text in [INDEX_HTML, APP_CSS] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
        assert!(!INDEX_HTML.contains("<script>") && !INDEX_HTML.contains("onclick="));
        assert!(
            !APP_JS.contains("innerHTML"),
            "text only: no HTML built from data"
        );
    }
}
