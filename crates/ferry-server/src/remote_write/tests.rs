use super::*;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn batch(samples: &[(&Labels, i64, f64)]) -> Arc<Batch> {
    Arc::new(
        samples
            .iter()
            .map(|(l, t, v)| (Arc::new((*l).clone()), *t, *v))
            .collect(),
    )
}

#[test]
fn encodes_a_write_request_byte_for_byte() {
    // Worked out by hand from the field numbers and wire types:
    // Label{name="__name__"(8), value="up"(2)} = 0a 08 .. 12 02 ..   (14 bytes)
    // Label{name="job", value="a"}              = 0a 03 .. 12 01 ..   (8 bytes)
    // Sample{value=1.0, timestamp=1}            = 09 <1.0 LE> 10 01   (11 bytes)
    // TimeSeries = 0a 0e <label> 0a 08 <label> 12 0b <sample>         (39 bytes)
    // WriteRequest = 0a 27 <series>
    let s = Series {
        labels: labels(&[("job", "a"), ("__name__", "up")]),
        samples: vec![(1, 1.0)],
    };
    let mut want = vec![0x0a, 0x27, 0x0a, 0x0e, 0x0a, 0x08];
    want.extend_from_slice(b"__name__");
    want.extend_from_slice(&[0x12, 0x02]);
    want.extend_from_slice(b"up");
    want.extend_from_slice(&[0x0a, 0x08, 0x0a, 0x03]);
    want.extend_from_slice(b"job");
    want.extend_from_slice(&[0x12, 0x01]);
    want.extend_from_slice(b"a");
    want.extend_from_slice(&[0x12, 0x0b, 0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x10, 0x01]);
    assert_eq!(encode(&[s]), want);
}

#[test]
fn encodes_long_strings_negative_times_and_stale_markers() {
    // A 200-byte value: its length is the two-byte varint c8 01. A
    // negative int64 is ten bytes (two's complement). A stale marker keeps
    // its NaN bits.
    let long = "x".repeat(200);
    let stale = ferry_metrics::storage::stale_nan();
    let s = Series {
        labels: labels(&[("v", &long)]),
        samples: vec![(-1, stale)],
    };
    let mut label = vec![0x0a, 0x01, b'v', 0x12, 0xc8, 0x01];
    label.extend(std::iter::repeat_n(b'x', 200));
    assert_eq!(label.len(), 206); // 206 = 0xce 0x01
    let mut sample = vec![0x09];
    sample.extend_from_slice(&0x7ff0_0000_0000_0002u64.to_le_bytes());
    sample.push(0x10);
    sample.extend_from_slice(&[0xff; 9]);
    sample.push(0x01);
    assert_eq!(sample.len(), 20);
    let mut series = vec![0x0a, 0xce, 0x01];
    series.extend(&label);
    series.extend([0x12, 20]);
    series.extend(&sample);
    assert_eq!(series.len(), 231); // 231 = 0xe7 0x01
    let mut want = vec![0x0a, 0xe7, 0x01];
    want.extend(&series);
    assert_eq!(encode(&[s]), want);
}

#[test]
fn the_body_is_snappy_block_format() {
    let s = Series {
        labels: labels(&[("__name__", "m"), ("a", &"y".repeat(300))]),
        samples: (0..50).map(|i| (i * 1000, i as f64)).collect(),
    };
    let raw = encode(std::slice::from_ref(&s));
    let compressed = body(&[s]);
    assert!(compressed.len() < raw.len(), "repetitive input compresses");
    let back = snap::raw::Decoder::new()
        .decompress_vec(&compressed)
        .unwrap();
    assert_eq!(back, raw);
}

#[test]
fn batches_up_to_the_limit_grouped_by_series_in_time_order() {
    let a = labels(&[("__name__", "a")]);
    let b = labels(&[("__name__", "b")]);
    let t0 = Instant::now();
    let mut q = Batcher::default();
    assert!(!q.due(t0, 3, BATCH_SEND_DEADLINE));
    q.push(batch(&[(&b, 20, 2.0), (&a, 10, 1.0)]), t0);
    q.push(batch(&[(&a, 30, 3.0), (&b, 15, 1.5)]), t0);
    assert_eq!(q.len(), 4);
    assert!(
        q.due(t0, 3, BATCH_SEND_DEADLINE),
        "a full request waits no more"
    );
    let r = q.take(3);
    assert_eq!(r.samples, 3);
    assert_eq!(r.newest_ms, 30);
    assert_eq!(
        r.series,
        vec![
            Series {
                labels: b.clone(),
                samples: vec![(20, 2.0)]
            },
            Series {
                labels: a.clone(),
                samples: vec![(10, 1.0), (30, 3.0)]
            },
        ]
    );
    assert_eq!(q.len(), 1);
    // The rest is as old as it was: due at the first sample's deadline.
    assert!(!q.due(t0, 3, BATCH_SEND_DEADLINE));
    assert!(q.due(t0 + BATCH_SEND_DEADLINE, 3, BATCH_SEND_DEADLINE));
    let r = q.take(3);
    assert_eq!(r.series[0].samples, vec![(15, 1.5)]);
    assert!(q.is_empty());
    assert_eq!(q.deadline(BATCH_SEND_DEADLINE), None);
}

#[test]
fn out_of_order_and_repeated_times_are_sorted_and_kept_once() {
    let a = labels(&[("__name__", "a")]);
    let mut q = Batcher::default();
    q.push(
        batch(&[(&a, 30, 3.0), (&a, 10, 1.0), (&a, 30, 4.0)]),
        Instant::now(),
    );
    let r = q.take(MAX_SAMPLES_PER_SEND);
    assert_eq!(r.series[0].samples, vec![(10, 1.0), (30, 4.0)]);
    assert_eq!(r.samples, 2);
}

#[test]
fn a_large_scrape_is_split_across_requests() {
    let a = labels(&[("__name__", "a")]);
    let a = Arc::new(a);
    let big: Batch = (0..4500).map(|i| (a.clone(), i, i as f64)).collect();
    let mut q = Batcher::default();
    q.push(Arc::new(big), Instant::now());
    let sizes: Vec<usize> =
        std::iter::from_fn(|| (!q.is_empty()).then(|| q.take(MAX_SAMPLES_PER_SEND).samples))
            .collect();
    assert_eq!(sizes, vec![2000, 2000, 500]);
    q.push(Arc::new(Vec::new()), Instant::now());
    assert!(q.is_empty(), "an empty batch waits for nothing");
}

#[test]
fn retries_network_errors_5xx_and_429_and_drops_the_rest() {
    assert_eq!(verdict(Some(200)), Verdict::Sent);
    assert_eq!(verdict(Some(204)), Verdict::Sent);
    assert_eq!(verdict(None), Verdict::Retry);
    assert_eq!(verdict(Some(429)), Verdict::Retry);
    assert_eq!(verdict(Some(500)), Verdict::Retry);
    assert_eq!(verdict(Some(503)), Verdict::Retry);
    assert_eq!(verdict(Some(400)), Verdict::Reject);
    assert_eq!(verdict(Some(401)), Verdict::Reject);
    assert_eq!(verdict(Some(404)), Verdict::Reject);
    assert_eq!(verdict(Some(302)), Verdict::Reject);
}

#[test]
fn backoff_doubles_from_30ms_to_5s_or_follows_retry_after() {
    let ms = |a| retry_delay(a, None).as_millis();
    assert_eq!(
        (0..10).map(ms).collect::<Vec<_>>(),
        vec![30, 60, 120, 240, 480, 960, 1920, 3840, 5000, 5000]
    );
    assert_eq!(ms(u32::MAX), 5000);
    assert_eq!(retry_delay(0, Some("2")), Duration::from_secs(2));
    assert_eq!(retry_delay(0, Some("3600")), MAX_BACKOFF);
    // An HTTP date is not followed: the backoff is.
    assert_eq!(
        retry_delay(3, Some("Wed, 21 Oct 2015 07:28:00 GMT")),
        Duration::from_millis(240)
    );
}

#[test]
fn urls_lose_their_userinfo() {
    assert_eq!(
        redact_url("http://user:secret@h:9090/api/v1/write"),
        "http://h:9090/api/v1/write"
    );
    assert_eq!(redact_url("http://h:9090/w?a=b@c"), "http://h:9090/w?a=b@c");
    assert_eq!(redact_url("http://a@b@h/"), "http://h/");
    assert_eq!(redact_url("http://h"), "http://h");
}

#[test]
fn renders_the_counters_per_receiver_and_nothing_without_one() {
    let senders = Senders::default();
    assert_eq!(render(&senders), "");
    let stats = Arc::new(Stats {
        url: redact_url("http://u:p@h:1/w"),
        samples_sent: AtomicU64::new(5),
        samples_failed: AtomicU64::new(1),
        samples_dropped: Arc::new(AtomicU64::new(2)),
        retries: AtomicU64::new(3),
        queue_batches: AtomicU64::new(4),
        highest_sent_ms: AtomicI64::new(1_500),
    });
    senders.add(stats);
    let text = render(&senders);
    for line in [
        "# TYPE ferry_remote_write_samples_sent_total counter",
        "ferry_remote_write_samples_sent_total{url=\"http://h:1/w\"} 5",
        "ferry_remote_write_samples_failed_total{url=\"http://h:1/w\"} 1",
        "ferry_remote_write_samples_dropped_total{url=\"http://h:1/w\"} 2",
        "ferry_remote_write_retries_total{url=\"http://h:1/w\"} 3",
        "# TYPE ferry_remote_write_queue_batches gauge",
        "ferry_remote_write_queue_batches{url=\"http://h:1/w\"} 4",
        "ferry_remote_write_queue_capacity_batches{url=\"http://h:1/w\"} 512",
        "ferry_remote_write_highest_sent_timestamp_seconds{url=\"http://h:1/w\"} 1.5",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
    assert!(!text.contains("u:p"));
    let parsed =
        ferry_metrics::exposition::parse(&text, ferry_metrics::exposition::Format::Prometheus)
            .unwrap();
    assert_eq!(parsed.samples.len(), FAMILIES.len());
}

#[test]
fn headers_are_the_protocols_then_the_specs() {
    let spec = RemoteWriteSpec::Full {
        url: "http://h/w".into(),
        headers: [("Authorization".to_string(), "Bearer t".to_string())].into(),
    };
    let h = headers(&spec).unwrap();
    assert_eq!(h["content-encoding"], "snappy");
    assert_eq!(h["content-type"], "application/x-protobuf");
    assert_eq!(h["x-prometheus-remote-write-version"], "0.1.0");
    assert!(h["user-agent"].to_str().unwrap().starts_with("ferry/"));
    assert!(h["authorization"].is_sensitive());
    let bad = RemoteWriteSpec::Full {
        url: "http://h/w".into(),
        headers: [("X-Token".to_string(), "a\nb".to_string())].into(),
    };
    assert_eq!(headers(&bad).unwrap_err(), "X-Token");
}

/// A receiver that answers each request with the next of `answers` (204
/// once they run out) and keeps what it was sent.
type Seen = Arc<Mutex<Vec<(http::HeaderMap, Vec<u8>)>>>;

async fn receiver(answers: Vec<u16>) -> (std::net::SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Default::default();
    let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
    let state = (seen.clone(), answers);
    let app = axum::Router::new()
        .route(
            "/w",
            axum::routing::post(
                |axum::extract::State((seen, answers)): axum::extract::State<(
                    Seen,
                    Arc<Mutex<VecDeque<u16>>>,
                )>,
                 headers: http::HeaderMap,
                 body: bytes::Bytes| async move {
                    seen.lock().unwrap().push((headers, body.to_vec()));
                    let code = answers.lock().unwrap().pop_front().unwrap_or(204);
                    (
                        http::StatusCode::from_u16(code).unwrap(),
                        "out of order sample\n",
                    )
                },
            ),
        )
        .with_state(state);
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

async fn until(what: &str, f: impl Fn() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn the_sender_retries_a_503_drops_a_400_and_sends_the_next_request() {
    let (addr, seen) = receiver(vec![503, 400]).await;
    let dir = tempfile::tempdir().unwrap();
    let db = MetricsDb::open(dir.path(), &Default::default()).unwrap();
    let senders = Senders::default();
    let spec = RemoteWriteSpec::Full {
        url: format!("http://user:pw@{addr}/w"),
        headers: [("X-Scope-OrgID".to_string(), "team".to_string())].into(),
    };
    let tasks = spawn(&db, &[spec], &senders);
    assert_eq!(tasks.len(), 1);
    let stats = senders.all()[0].clone();
    assert_eq!(stats.url, format!("http://{addr}/w"));
    let a = labels(&[("__name__", "a"), ("job", "x")]);
    db.ingest_target(
        "t",
        vec![(Arc::new(a.clone()), 1_000, 1.0)],
        BTreeMap::new(),
        1_000,
    );
    until("the 400", || {
        stats.samples_failed.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(stats.retries.load(Ordering::Relaxed), 1);
    // The next scrape ends the series with a stale marker: sent as it is.
    db.ingest_target("t", vec![], BTreeMap::new(), 2_000);
    until("the 204", || {
        stats.samples_sent.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(stats.highest_sent_ms.load(Ordering::Relaxed), 2_000);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].1, seen[1].1, "a retry sends the same request");
    let (headers, body) = &seen[2];
    let raw = snap::raw::Decoder::new().decompress_vec(body).unwrap();
    let stale = ferry_metrics::storage::stale_nan();
    assert_eq!(
        raw,
        encode(&[Series {
            labels: a,
            samples: vec![(2_000, stale)]
        }])
    );
    assert_eq!(headers["content-encoding"], "snappy");
    assert_eq!(headers["x-scope-orgid"], "team");
    assert_eq!(headers["authorization"], "Basic dXNlcjpwdw==");
    for t in tasks {
        t.abort();
    }
}
