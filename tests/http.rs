//! HTTP tests against `routes()` in-process, with a temp boot tree.

use std::sync::Arc;

use actix_web::{test, App};
use pxesrv::boottree::BootTree;
use pxesrv::config::ServerConfig;
use pxesrv::http::{routes, AppState};

fn tree() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for sub in ["once", "static", "menus"] {
        std::fs::create_dir_all(d.path().join(sub)).unwrap();
    }
    std::fs::write(d.path().join("default"), "#!ipxe\necho DEFAULT\n").unwrap();
    std::fs::write(d.path().join("menus/a.ipxe"), "#!ipxe\necho A\n").unwrap();
    d
}

fn state(root: &std::path::Path) -> actix_web::web::Data<AppState> {
    let tree = Arc::new(BootTree::open(root).unwrap());
    AppState::new(tree, ServerConfig::for_root(root.to_owned()))
}

async fn body_of(
    app: &impl actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse,
        Error = actix_web::Error,
    >,
    peer: &str,
    uri: &str,
) -> (u16, String) {
    let req = test::TestRequest::get()
        .uri(uri)
        .peer_addr(peer.parse().unwrap())
        .to_request();
    let res = test::call_service(app, req).await;
    let status = res.status().as_u16();
    let body = test::read_body(res).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[actix_web::test]
async fn static_entry_by_peer_address_and_mapped_ipv6() {
    let d = tree();
    std::os::unix::fs::symlink("../menus/a.ipxe", d.path().join("static/10.0.0.5")).unwrap();
    let app = test::init_service(App::new().app_data(state(d.path())).configure(routes)).await;
    assert_eq!(
        body_of(&app, "10.0.0.5:1000", "/redirect").await,
        (200, "#!ipxe\necho A\n".into())
    );
    assert_eq!(
        body_of(&app, "[::ffff:10.0.0.5]:1000", "/redirect").await,
        (200, "#!ipxe\necho A\n".into())
    );
    assert_eq!(
        body_of(&app, "10.0.0.6:1000", "/redirect").await,
        (200, "#!ipxe\necho DEFAULT\n".into())
    );
}

#[actix_web::test]
async fn once_link_consumed_by_get_not_by_head() {
    let d = tree();
    std::os::unix::fs::symlink("../menus/a.ipxe", d.path().join("once/aa-bb-cc-dd-ee-ff")).unwrap();
    let app = test::init_service(App::new().app_data(state(d.path())).configure(routes)).await;
    let head = test::TestRequest::default()
        .method(actix_web::http::Method::HEAD)
        .uri("/redirect?mac=AA:BB:CC:DD:EE:FF")
        .peer_addr("10.0.0.7:1".parse().unwrap())
        .to_request();
    let res = test::call_service(&app, head).await;
    assert_eq!(res.headers().get("x-pxesrv-rule").unwrap(), "once-mac");
    assert!(d
        .path()
        .join("once/aa-bb-cc-dd-ee-ff")
        .symlink_metadata()
        .is_ok());
    let uri = "/redirect?mac=aabbccddeeff";
    assert_eq!(body_of(&app, "10.0.0.7:1", uri).await.1, "#!ipxe\necho A\n");
    assert_eq!(
        body_of(&app, "10.0.0.7:1", uri).await.1,
        "#!ipxe\necho DEFAULT\n"
    );
}

#[actix_web::test]
async fn plain_files_and_private_entries() {
    let d = tree();
    std::fs::write(d.path().join("static/10.0.0.8"), "#!ipxe\necho PRIVATE\n").unwrap();
    let app = test::init_service(App::new().app_data(state(d.path())).configure(routes)).await;
    assert_eq!(
        body_of(&app, "10.0.0.8:1", "/menus/a.ipxe").await,
        (200, "#!ipxe\necho A\n".into())
    );
    assert_eq!(body_of(&app, "10.0.0.9:1", "/static/10.0.0.8").await.0, 404);
    assert_eq!(
        body_of(&app, "10.0.0.9:1", "/menus/../static/10.0.0.8")
            .await
            .0,
        404
    );
    let (status, body) = body_of(&app, "10.0.0.9:1", "/redirect?mac=nope").await;
    assert_eq!(status, 400);
    assert!(body.contains("is not a MAC address"), "{body}");
}
