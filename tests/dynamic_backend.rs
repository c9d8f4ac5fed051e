//! Dynamic backends: `traffik::backend::scope`, `BackendScopeLayer`,
//! `.dynamic_backend()` and `ThrottleLayer::scoped()`, plus the backend
//! lifecycle (`initialize`, `reset`, `close`, `persistent`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use http::request::Parts;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::{service_fn, Layer, ServiceExt};
use traffik::backend::{self, BackendScopeLayer, InMemoryBackend, ThrottleBackend};
use traffik::{
    Decision, Error, HttpThrottle, Identity, MiddlewareThrottle, Strategy, ThrottleLayer,
};

/// A throttle with no backend of its own: `limit` per hour, fixed window (no
/// refill during a test), every request counted for one identity.
fn dynamic_throttle(limit: u64) -> HttpThrottle {
    HttpThrottle::builder()
        .limit(limit)
        .hours(1)
        .strategy(Strategy::FixedWindow)
        .dynamic_backend()
        .build()
        .unwrap()
}

/// The same, identifying the client with an async closure that yields, so
/// that decisions take the asynchronous path and tasks interleave.
fn dynamic_throttle_async_identity(limit: u64) -> HttpThrottle {
    HttpThrottle::builder()
        .limit(limit)
        .hours(1)
        .strategy(Strategy::FixedWindow)
        .dynamic_backend()
        .identifier(|_: &Parts| async {
            tokio::task::yield_now().await;
            Identity::key("same-user")
        })
        .build()
        .unwrap()
}

fn peer() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 7], 40_000))
}

fn request(path: &str) -> Request<()> {
    Request::builder()
        .uri(path)
        .extension(peer())
        .body(())
        .unwrap()
}

/// `Ok(true)` for an admitted hit, `Ok(false)` for a throttled one (`hit`
/// answers `Err(Error::Throttled)`), other errors as they are.
fn admitted(result: Result<Decision, Error>) -> Result<bool, Error> {
    match result {
        Ok(decision) => Ok(decision.allowed),
        Err(Error::Throttled(_)) => Ok(false),
        Err(error) => Err(error),
    }
}

/// One hit of `throttle` inside `scope(backend, ..)`: `Ok(allowed)`.
///
/// The hit is created *inside* the scoped future: a throttle resolves its
/// backend when `hit` is called.
async fn hit_in<B: ThrottleBackend>(backend: B, throttle: &HttpThrottle) -> Result<bool, Error> {
    let req = request("/x");
    admitted(backend::scope(backend, async { throttle.hit(&req).await }).await)
}

#[tokio::test]
async fn scopes_keep_separate_state_and_the_innermost_wins() {
    // Same prefix on purpose: separation comes from the backend instance.
    let a = InMemoryBackend::new();
    let b = InMemoryBackend::new();
    let t = dynamic_throttle(2);

    // Scope A: two admitted, the third refused.
    assert!(hit_in(a.clone(), &t).await.unwrap());
    assert!(hit_in(a.clone(), &t).await.unwrap());
    assert!(!hit_in(a.clone(), &t).await.unwrap());

    // Scope B: a fresh counter.
    assert!(hit_in(b.clone(), &t).await.unwrap());
    assert_eq!((a.len(), b.len()), (1, 1));

    // A nested inside B: A is used (full), then B again once A's scope ends.
    let req = request("/x");
    let (inner, outer) = backend::scope(b.clone(), async {
        let inner = admitted(backend::scope(a.clone(), async { t.hit(&req).await }).await);
        let outer = admitted(t.hit(&req).await);
        (inner.unwrap(), outer.unwrap())
    })
    .await;
    assert!(!inner, "A is innermost and exhausted");
    assert!(outer, "back in B, which has one hit left");
    assert!(!hit_in(b.clone(), &t).await.unwrap(), "B is now exhausted");

    // `current()` reports the innermost scope and nothing outside.
    let named_a = InMemoryBackend::builder().prefix("tenant-a").build();
    let named_b = InMemoryBackend::builder().prefix("tenant-b").build();
    let seen = backend::scope(named_a, async {
        let outer = backend::current().unwrap().prefix().to_owned();
        let inner = backend::scope(named_b, async {
            backend::current().unwrap().prefix().to_owned()
        })
        .await;
        let after = backend::current().unwrap().prefix().to_owned();
        (outer, inner, after)
    })
    .await;
    assert_eq!(
        seen,
        ("tenant-a".into(), "tenant-b".into(), "tenant-a".into())
    );
    assert!(backend::current().is_none());
}

#[tokio::test]
async fn a_throttle_with_its_own_backend_ignores_the_scope() {
    let own = InMemoryBackend::new();
    let scoped = InMemoryBackend::new();
    let t = HttpThrottle::builder()
        .limit(1)
        .hours(1)
        .backend(own.clone())
        .build()
        .unwrap();
    assert!(hit_in(scoped.clone(), &t).await.unwrap());
    assert!(!hit_in(scoped.clone(), &t).await.unwrap());
    assert_eq!((own.len(), scoped.len()), (1, 0));
}

#[tokio::test]
async fn the_scope_accepts_a_shared_dyn_backend() {
    let memory = InMemoryBackend::new();
    let shared: backend::DynBackend = Arc::new(memory.clone());
    let t = dynamic_throttle(1);
    assert!(hit_in(Arc::clone(&shared), &t).await.unwrap());
    assert!(!hit_in(shared, &t).await.unwrap());
    assert_eq!(memory.len(), 1);
}

#[tokio::test]
async fn dynamic_throttle_outside_any_scope_is_a_configuration_error() {
    for t in [dynamic_throttle(5), dynamic_throttle_async_identity(5)] {
        let error = t.hit(&request("/x")).await.unwrap_err();
        let Error::Configuration(message) = &error else {
            panic!("expected Error::Configuration, got {error:?}");
        };
        assert!(message.contains(".dynamic_backend()"), "{message}");
        assert!(message.contains("traffik::backend::scope"), "{message}");
        assert!(message.contains("BackendScopeLayer"), "{message}");
        let error = t.peek(&request("/x")).await.unwrap_err();
        assert!(matches!(error, Error::Configuration(_)), "{error:?}");
    }
}

#[tokio::test]
async fn dynamic_layer_outside_any_scope_answers_500_naming_the_fix() {
    // In shadow mode too: a missing scope is a configuration error, not a
    // limit to report (as the README says).
    let shadow = HttpThrottle::builder()
        .rate("5/min")
        .dynamic_backend()
        .shadow(true)
        .build()
        .unwrap();
    for t in [dynamic_throttle(5), shadow] {
        let svc = t.layer().layer(service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(http::Response::new(Body::from("ok")))
        }));
        let req = Request::builder()
            .uri("/x")
            .extension(peer())
            .body(Body::empty())
            .unwrap();
        let response = svc.oneshot(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("BackendScopeLayer"), "{body}");
        assert!(body.contains("traffik::backend::scope"), "{body}");
    }
}

#[tokio::test]
async fn spawned_tasks_do_not_inherit_the_scope_but_can_carry_it() {
    let a = InMemoryBackend::new();
    let t = dynamic_throttle(5);
    backend::scope(a.clone(), async {
        // tokio task-locals stay with their task...
        let bare = tokio::spawn(async { backend::current().is_none() });
        assert!(bare.await.unwrap());
        // ...so capture the current backend and scope the new task with it.
        let current = backend::current().unwrap();
        let t = t.clone();
        let carried = tokio::spawn(backend::scope(current, async move {
            admitted(t.hit(&request("/x")).await)
        }));
        assert!(carried.await.unwrap().unwrap());
    })
    .await;
    assert_eq!(a.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_scopes_never_see_each_others_counts() {
    const SCOPES: usize = 8;
    const TASKS: usize = 64;
    const LIMIT: u64 = 10;
    for t in [
        dynamic_throttle(LIMIT),
        dynamic_throttle_async_identity(LIMIT),
    ] {
        let backends: Vec<InMemoryBackend> = (0..SCOPES).map(|_| InMemoryBackend::new()).collect();
        let mut handles = Vec::new();
        // Interleave the scopes: task i belongs to scope i % SCOPES.
        for i in 0..SCOPES * TASKS {
            let scope = i % SCOPES;
            let t = t.clone();
            let backend = backends[scope].clone();
            handles.push(tokio::spawn(async move {
                let allowed = backend::scope(backend, async move {
                    tokio::task::yield_now().await;
                    admitted(t.hit(&request("/same")).await).unwrap()
                })
                .await;
                (scope, allowed)
            }));
        }
        let mut admitted = [0u64; SCOPES];
        for handle in handles {
            let (scope, allowed) = handle.await.unwrap();
            admitted[scope] += u64::from(allowed);
        }
        assert_eq!(admitted, [LIMIT; SCOPES], "exactly LIMIT per scope");
        for backend in &backends {
            assert_eq!(backend.len(), 1, "one key per scope");
        }
    }
}

/// The tenant's backend, chosen from the `x-tenant` header.
fn tenant_selector(
    free: InMemoryBackend,
    pro: InMemoryBackend,
) -> impl Fn(&Parts) -> InMemoryBackend + Clone + Send + Sync + 'static {
    move |parts: &Parts| match parts.headers.get("x-tenant").map(|v| v.as_bytes()) {
        Some(b"pro") => pro.clone(),
        _ => free.clone(),
    }
}

/// `/limited` has a per-route dynamic throttle (2/h); every route is under a
/// global `ThrottleLayer::scoped()` rule (4/h); the backend comes from the
/// tenant header, chosen by the outermost `BackendScopeLayer`.
fn tenant_app(free: InMemoryBackend, pro: InMemoryBackend) -> Router {
    let per_route = dynamic_throttle(2);
    let global = HttpThrottle::builder()
        .limit(4)
        .hours(1)
        .strategy(Strategy::FixedWindow)
        .shared_across_routes()
        .build()
        .unwrap();
    Router::new()
        .route(
            "/limited",
            get(|| async { "limited" }).route_layer(per_route.layer()),
        )
        .route("/open", get(|| async { "open" }))
        .layer(ThrottleLayer::scoped().rule(MiddlewareThrottle::new(global)))
        .layer(BackendScopeLayer::new(tenant_selector(free, pro)))
}

fn tenant_request(tenant: &str, path: &str) -> Request<Body> {
    Request::builder()
        .uri(path)
        .header("x-tenant", tenant)
        .extension(ConnectInfo(peer()))
        .body(Body::empty())
        .unwrap()
}

async fn status(app: &Router, tenant: &str, path: &str) -> u16 {
    app.clone()
        .oneshot(tenant_request(tenant, path))
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn backend_scope_layer_selects_a_backend_per_tenant() {
    let free = InMemoryBackend::new();
    let pro = InMemoryBackend::new();
    let app = tenant_app(free.clone(), pro.clone());

    // Free tenant: per-route limit 2 on /limited.
    assert_eq!(status(&app, "free", "/limited").await, 200);
    assert_eq!(status(&app, "free", "/limited").await, 200);
    assert_eq!(status(&app, "free", "/limited").await, 429);
    // Two keys (per-route and global), all in the free backend.
    assert_eq!((free.len(), pro.len()), (2, 0));

    // Pro tenant, same client address: its own counters.
    assert_eq!(status(&app, "pro", "/limited").await, 200);
    assert_eq!(status(&app, "pro", "/limited").await, 200);
    assert_eq!(status(&app, "pro", "/limited").await, 429);
    assert_eq!((free.len(), pro.len()), (2, 2));

    // The global rule (4 per tenant) saw 3 hits of each tenant.
    assert_eq!(status(&app, "free", "/open").await, 200);
    assert_eq!(status(&app, "free", "/open").await, 429);
    assert_eq!(status(&app, "pro", "/open").await, 200);
    assert_eq!(status(&app, "pro", "/open").await, 429);

    // Resetting one tenant's backend frees that tenant only.
    free.reset().await.unwrap();
    assert_eq!(status(&app, "free", "/limited").await, 200);
    assert_eq!(status(&app, "pro", "/open").await, 429);
}

#[tokio::test]
async fn a_throttle_layer_with_its_own_backend_wins_over_the_scope() {
    let layer_backend = InMemoryBackend::new();
    let scoped = InMemoryBackend::new();
    let rule = HttpThrottle::builder().limit(1).hours(1).build().unwrap();
    let scoped_for_layer = scoped.clone();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(ThrottleLayer::new(layer_backend.clone()).rule(MiddlewareThrottle::new(rule)))
        .layer(BackendScopeLayer::new(move |_: &Parts| {
            scoped_for_layer.clone()
        }));
    assert_eq!(status(&app, "any", "/").await, 200);
    assert_eq!(status(&app, "any", "/").await, 429);
    assert_eq!((layer_backend.len(), scoped.len()), (1, 0));
}

#[tokio::test]
async fn scope_reaches_hooks_and_handlers() {
    // A rule with an async hook takes the asynchronous path of the layer;
    // the handler itself calls `hit` on a dynamic throttle.
    let tenant = InMemoryBackend::new();
    let rule = dynamic_throttle(3);
    let in_handler = dynamic_throttle(1);
    let selected = tenant.clone();
    let app = Router::new()
        .route(
            "/",
            get(move |req: Request<Body>| {
                let t = in_handler.clone();
                async move { t.hit(&req).await.map(|_| "ok") }
            }),
        )
        .layer(
            ThrottleLayer::scoped().rule(MiddlewareThrottle::new(rule).hook(|_: &Parts| async {
                tokio::task::yield_now().await;
                true
            })),
        )
        .layer(BackendScopeLayer::new(move |_: &Parts| selected.clone()));
    assert_eq!(status(&app, "t", "/").await, 200);
    assert_eq!(status(&app, "t", "/").await, 429, "the handler's throttle");
    assert_eq!(
        tenant.len(),
        2,
        "both throttles counted in the tenant backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tenants_through_the_layer() {
    const TENANTS: usize = 6;
    const REQUESTS: usize = 40;
    let backends: Vec<InMemoryBackend> = (0..TENANTS).map(|_| InMemoryBackend::new()).collect();
    let per_tenant = backends.clone();
    let t = dynamic_throttle(7);
    let app = Router::new()
        .route("/", get(|| async { "ok" }).route_layer(t.layer()))
        .layer(BackendScopeLayer::new(move |parts: &Parts| {
            let tenant: usize = parts.headers["x-tenant"].to_str().unwrap().parse().unwrap();
            per_tenant[tenant].clone()
        }));
    let mut handles = Vec::new();
    for i in 0..TENANTS * REQUESTS {
        let app = app.clone();
        let tenant = i % TENANTS;
        handles.push(tokio::spawn(async move {
            let code = status(&app, &tenant.to_string(), "/").await;
            (tenant, code)
        }));
    }
    let mut admitted = [0; TENANTS];
    for handle in handles {
        let (tenant, code) = handle.await.unwrap();
        assert!(code == 200 || code == 429, "{code}");
        admitted[tenant] += usize::from(code == 200);
    }
    assert_eq!(admitted, [7; TENANTS]);
}

#[tokio::test]
async fn multi_tenant_app_over_a_real_server() {
    let free = InMemoryBackend::new();
    let pro = InMemoryBackend::new();
    let app = tenant_app(free.clone(), pro.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        })
        .await
    });

    let mut codes = Vec::new();
    for tenant in ["free", "free", "free", "pro", "pro", "pro"] {
        codes.push(http_get(addr, "/limited", tenant).await);
    }
    assert_eq!(codes, [200, 200, 429, 200, 200, 429]);
    assert_eq!((free.len(), pro.len()), (2, 2));

    // Graceful shutdown, then close the backends (non-persistent: cleared).
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    free.close().await.unwrap();
    pro.close().await.unwrap();
    assert!(free.is_empty() && pro.is_empty());
}

/// A minimal HTTP/1.1 GET with an `x-tenant` header; returns the status.
async fn http_get(addr: SocketAddr, path: &str, tenant: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nx-tenant: {tenant}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    raw.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn in_memory_lifecycle() {
    let t = dynamic_throttle(1);
    let transient = InMemoryBackend::new();
    let persistent = InMemoryBackend::builder().persistent(true).build();
    assert!(!transient.persistent() && persistent.persistent());

    for backend in [&transient, &persistent] {
        backend.initialize().await.unwrap();
        assert!(hit_in(backend.clone(), &t).await.unwrap());
        assert!(!hit_in(backend.clone(), &t).await.unwrap());
    }

    // initialize(): clears the non-persistent backend only.
    transient.initialize().await.unwrap();
    persistent.initialize().await.unwrap();
    assert!(transient.is_empty());
    assert_eq!(persistent.len(), 1);
    assert!(hit_in(transient.clone(), &t).await.unwrap());
    assert!(!hit_in(persistent.clone(), &t).await.unwrap());

    // close(): the same rule.
    transient.close().await.unwrap();
    persistent.close().await.unwrap();
    assert!(transient.is_empty());
    assert_eq!(persistent.len(), 1);

    // reset(): clears both, on demand.
    persistent.reset().await.unwrap();
    assert!(persistent.is_empty());
    assert!(hit_in(persistent.clone(), &t).await.unwrap());

    // The same through the trait object the throttles hold.
    let dynamic: backend::DynBackend = Arc::new(persistent.clone());
    assert!(dynamic.persistent());
    dynamic.close().await.unwrap();
    assert_eq!(persistent.len(), 1);
    dynamic.reset().await.unwrap();
    assert!(persistent.is_empty());
    let dynamic: backend::DynBackend = Arc::new(transient.clone());
    assert!(hit_in(transient.clone(), &t).await.unwrap());
    dynamic.initialize().await.unwrap();
    assert!(transient.is_empty());
}

/// One tenant on Redis, one in memory. Reads `REDIS_URL` (default
/// `redis://127.0.0.1:6379`); with no server the test prints SKIPPED and
/// passes, except under `CI=true`, where it fails.
#[cfg(feature = "redis")]
#[tokio::test]
async fn one_tenant_on_redis_one_in_memory() {
    use traffik::backend::RedisBackend;

    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("traffik-test-dyn-{}", std::process::id());
    let redis = match RedisBackend::builder(url.as_str())
        .prefix(prefix)
        .build()
        .await
    {
        Ok(redis) => redis,
        Err(error) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true but no Redis server at {url}: {error}");
            }
            eprintln!(
                "SKIPPED one_tenant_on_redis_one_in_memory: no Redis server at {url} ({error})"
            );
            return;
        }
    };
    redis.reset().await.unwrap();
    let memory = InMemoryBackend::new();
    let on_redis = redis.clone();
    let on_memory = memory.clone();
    let t = dynamic_throttle(2);
    let app = Router::new()
        .route("/", get(|| async { "ok" }).route_layer(t.layer()))
        .layer(BackendScopeLayer::new(move |parts: &Parts| {
            if parts.headers["x-tenant"] == "big" {
                Arc::new(on_redis.clone()) as backend::DynBackend
            } else {
                Arc::new(on_memory.clone()) as backend::DynBackend
            }
        }));
    let mut codes = Vec::new();
    for tenant in ["big", "big", "big", "small", "small", "small"] {
        codes.push(status(&app, tenant, "/").await);
    }
    assert_eq!(codes, [200, 200, 429, 200, 200, 429]);
    assert_eq!(memory.len(), 1, "only the small tenant used memory");
    redis.reset().await.unwrap();
    assert_eq!(
        status(&app, "big", "/").await,
        200,
        "reset freed the big tenant"
    );
    redis.reset().await.unwrap();
    redis.close().await.unwrap();
}

#[tokio::test]
async fn nested_scope_layers_innermost_wins() {
    // An outer scope layer for the whole app, an inner one on one route.
    let outer = InMemoryBackend::new();
    let inner = InMemoryBackend::new();
    let t = dynamic_throttle(1);
    let (outer_select, inner_select) = (outer.clone(), inner.clone());
    let app = Router::new()
        .route(
            "/inner",
            get(|| async { "inner" })
                .route_layer(t.layer())
                .route_layer(BackendScopeLayer::new(move |_: &Parts| {
                    inner_select.clone()
                })),
        )
        .route("/outer", get(|| async { "outer" }).route_layer(t.layer()))
        .layer(BackendScopeLayer::new(move |_: &Parts| {
            outer_select.clone()
        }));
    assert_eq!(status(&app, "x", "/inner").await, 200);
    assert_eq!(status(&app, "x", "/inner").await, 429);
    assert_eq!((outer.len(), inner.len()), (0, 1));
    assert_eq!(status(&app, "x", "/outer").await, 200);
    assert_eq!(status(&app, "x", "/outer").await, 429);
    assert_eq!((outer.len(), inner.len()), (1, 1));
}

#[tokio::test]
async fn scope_returns_a_nameable_future() {
    // `scope` returns `BackendScope<F>`, so it can be stored in a struct or
    // used as a Tower response future.
    let memory = InMemoryBackend::builder().prefix("named").build();
    let future: backend::BackendScope<_> = backend::scope(memory, async {
        backend::current().map(|b| b.prefix().to_owned())
    });
    assert_eq!(future.await.as_deref(), Some("named"));
}

#[tokio::test]
async fn a_hit_created_outside_a_scope_resolves_it_when_awaited_inside() {
    let t = dynamic_throttle(1);
    let backend = InMemoryBackend::new();
    // The future is created before the scope exists and awaited inside it.
    let first = backend::scope(backend.clone(), t.hit(&request("/late"))).await;
    assert!(first.unwrap().allowed);
    let second = backend::scope(backend.clone(), t.hit(&request("/late"))).await;
    assert!(matches!(second, Err(Error::Throttled(_))), "{second:?}");
    // Awaited outside any scope: the configuration error.
    let outside = t.hit(&request("/late")).await;
    assert!(
        matches!(outside, Err(Error::Configuration(_))),
        "{outside:?}"
    );
}

/// A hit made outside any scope and polled inside one decides on the
/// general (asynchronous) path; one made inside the scope takes the direct
/// in-memory path. Both must count on the same key of the same client.
#[tokio::test]
async fn the_direct_and_the_general_path_share_a_clients_counter() {
    let memory = InMemoryBackend::new();
    let throttle = dynamic_throttle(3);
    let req = request("/x");
    let general = || backend::scope(memory.clone(), throttle.hit(&req));
    let direct = || backend::scope(memory.clone(), async { throttle.hit(&req).await });
    assert!(admitted(general().await).unwrap());
    assert!(admitted(direct().await).unwrap());
    assert!(admitted(general().await).unwrap());
    assert!(!admitted(direct().await).unwrap());
    assert!(!admitted(general().await).unwrap());
    assert_eq!(memory.len(), 1, "one key for one client");
}
