use bytes::Bytes;
use http::{Method, StatusCode};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_preflight_and_labels_allowed_origins_only() {
    let server = Server::start_with(|c| c.cors_origins = vec!["http://viewer.example".into()]).await;
    let url = format!("{}/studies", server.base);
    let preflight = send(
        Method::OPTIONS,
        &url,
        &[("origin", "http://viewer.example"), ("access-control-request-method", "GET")],
        Bytes::new(),
    )
    .await;
    assert_eq!(preflight.status, StatusCode::NO_CONTENT);
    assert_eq!(preflight.header("access-control-allow-origin"), Some("http://viewer.example"));
    assert!(preflight.header("access-control-allow-methods").unwrap().contains("POST"));

    let allowed = send(Method::GET, &url, &[("origin", "http://viewer.example")], Bytes::new()).await;
    assert_eq!(allowed.header("access-control-allow-origin"), Some("http://viewer.example"));
    assert!(allowed.header("access-control-expose-headers").unwrap().contains("Warning"));
    let error =
        send(Method::GET, &format!("{url}?limit=x"), &[("origin", "http://viewer.example")], Bytes::new()).await;
    assert_eq!(error.status, StatusCode::BAD_REQUEST);
    assert_eq!(error.header("access-control-allow-origin"), Some("http://viewer.example"), "errors too");

    let other = send(Method::GET, &url, &[("origin", "http://evil.example")], Bytes::new()).await;
    assert_eq!(other.header("access-control-allow-origin"), None);
}
