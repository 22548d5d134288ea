//! One trace per message: an in-process OTLP collector receives the spans of a message sent
//! to an offline member with a device, through gateway → messaging → (stream) notification
//! → presence → push.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value as AnyValue,
    trace::v1::Span,
};
use parley_testkit::{Client, Stack};
use serde_json::json;

use crate::T;

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().expect("lock");
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(v) => Some(v.clone()),
            AnyValue::IntValue(v) => Some(v.to_string()),
            _ => None,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_covers_gateway_messaging_notification_and_presence() -> anyhow::Result<()> {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let svc = TraceServiceServer::new(collector.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    let guard = parley_kit::telemetry::init_with("parley-test", Some(format!("http://{addr}")))?;

    let mut stack = Stack::empty().await?;
    stack.add_messaging(&[]).await?;
    stack.add_presence(&[]).await?;
    stack.add_notification(&[]).await?;
    stack.add_gateway(&[]).await?;
    let alice = Client::new(&stack.url(0), "alice");
    let bob = Client::new(&stack.url(0), "bob");
    let ch = alice.group("traced", &["bob"]).await?;
    // Bob is offline with a webhook device.
    let (hook, _seen) = crate::notification::receiver().await?;
    let (s, _, _) = bob
        .req(
            "POST",
            "/v1/devices",
            Some(json!({"platform": "webhook", "token": hook})),
        )
        .await?;
    assert_eq!(s, 201);

    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4737";
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/channels/{ch}/messages", stack.url(0)))
        .bearer_auth(&alice.token)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({"client_msg_id": "t1", "body": "follow me"}))
        .send()
        .await?;
    assert_eq!(resp.status(), 201);

    // Flush until the push span of this trace has arrived (bounded).
    let want = hex_bytes(trace_id);
    let deadline = tokio::time::Instant::now() + T;
    let spans: Vec<Span> = loop {
        let g = &guard;
        tokio::task::block_in_place(|| g.flush())?;
        let spans: Vec<Span> = collector
            .0
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.trace_id == want)
            .cloned()
            .collect();
        if spans.iter().any(|s| s.name == "notification.push") {
            break spans;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no push span in the trace; got {:?}",
            names(&spans)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let names = names(&spans);
    let rpc_services: HashSet<String> = spans
        .iter()
        .filter_map(|s| attr(s, "rpc.service"))
        .collect();
    assert!(
        names.iter().any(|n| n == "POST /v1/channels/{id}/messages"),
        "gateway span missing: {names:?}"
    );
    assert!(
        rpc_services.contains("parley.messaging.v1.MessagingService"),
        "messaging span missing: {rpc_services:?}"
    );
    assert!(
        rpc_services.contains("parley.presence.v1.PresenceService"),
        "presence span missing: {rpc_services:?}"
    );
    assert!(
        names.iter().any(|n| n == "notification.fanout"),
        "notification span missing: {names:?}"
    );
    assert!(
        names.iter().any(|n| n == "notification.push"),
        "push span missing: {names:?}"
    );
    // Semantic conventions beyond rpc.*: the database write, the Redis publish, the stream
    // consumer and the HTTP request.
    let db = spans
        .iter()
        .find(|s| s.name == "INSERT messaging.messages")
        .expect("db span");
    assert_eq!(attr(db, "db.system.name").as_deref(), Some("postgresql"));
    // The send's server span in messaging (the gateway batches sends into SendMessages
    // calls; each item has its own span in the sender's trace) is the write's parent.
    let send = spans
        .iter()
        .find(|s| s.span_id == db.parent_span_id)
        .expect("the db span's parent is in the trace");
    assert_eq!(
        send.name,
        "parley.messaging.v1.MessagingService/SendMessage"
    );
    assert_eq!(attr(send, "rpc.grpc.status_code").as_deref(), Some("0"));
    let publish = spans
        .iter()
        .find(|s| s.name == "publish messaging:events")
        .expect("publish span");
    assert_eq!(attr(publish, "messaging.system").as_deref(), Some("redis"));
    let fanout = spans
        .iter()
        .find(|s| s.name == "notification.fanout")
        .expect("fanout span");
    assert_eq!(
        attr(fanout, "messaging.operation.type").as_deref(),
        Some("process")
    );
    let http = spans
        .iter()
        .find(|s| s.name == "POST /v1/channels/{id}/messages")
        .expect("http span");
    assert_eq!(
        attr(http, "http.route").as_deref(),
        Some("/v1/channels/{id}/messages")
    );
    assert_eq!(
        attr(http, "http.response.status_code").as_deref(),
        Some("201")
    );
    let methods: HashSet<String> = spans.iter().filter_map(|s| attr(s, "rpc.method")).collect();
    for m in ["SendMessage", "ListMembers", "GetPresence"] {
        assert!(
            methods.contains(m),
            "no rpc.server span for {m}: {methods:?}"
        );
    }
    assert!(
        spans
            .iter()
            .filter(|s| attr(s, "rpc.service").is_some())
            .all(|s| attr(s, "rpc.system").as_deref() == Some("grpc")),
        "rpc.system on every rpc.server span"
    );

    // Parent links: every span's parent is another span of this trace, except the root,
    // whose parent is the client's span.
    let ids: HashMap<Vec<u8>, &Span> = spans.iter().map(|s| (s.span_id.clone(), s)).collect();
    let client_span = hex_bytes("00f067aa0ba902b7");
    for s in &spans {
        assert!(
            ids.contains_key(&s.parent_span_id) || s.parent_span_id == client_span,
            "span {} has a parent outside the trace",
            s.name
        );
    }
    let root: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == client_span)
        .collect();
    assert_eq!(
        root.len(),
        1,
        "one root under the client span: {:?}",
        root.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    assert_eq!(root[0].name, "POST /v1/channels/{id}/messages");
    // The push descends from the gateway request through the fan-out.
    let mut at = spans
        .iter()
        .find(|s| s.name == "notification.push")
        .expect("push");
    let mut chain = vec![at.name.clone()];
    while let Some(p) = ids.get(&at.parent_span_id) {
        at = p;
        chain.push(at.name.clone());
    }
    assert!(
        chain.contains(&"notification.fanout".to_owned()),
        "{chain:?}"
    );
    assert_eq!(
        chain.last().map(String::as_str),
        Some("POST /v1/channels/{id}/messages"),
        "{chain:?}"
    );
    Ok(())
}

fn names(spans: &[Span]) -> Vec<String> {
    spans.iter().map(|s| s.name.clone()).collect()
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0))
        .collect()
}
