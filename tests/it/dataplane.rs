//! The data plane outlives the control plane: restarts, crashes and
//! upgrades of Ferry itself under continuous load, through a service with
//! 3 instances. Two loads run throughout: 8 keep-alive connections and 4
//! clients that open a new connection for every request.

use super::harness::*;
use ferry::loadgen::{LoadConfig, LoadGen, LoadReport};
use std::sync::Arc;
use std::time::Duration;

fn spec() -> Spec {
    Spec {
        instances: 3,
        ..Spec::default()
    }
}

struct Loads {
    keep_alive: LoadGen,
    fresh: LoadGen,
}

impl Loads {
    fn start(env: &Env) -> Loads {
        let keep_alive = load(env.proxy());
        let mut c = LoadConfig::new(env.proxy());
        c.connections = 4;
        c.rate_per_connection = Some(25.0);
        c.max_duration = Duration::from_secs(120);
        c.close_each = true;
        Loads {
            keep_alive,
            fresh: LoadGen::start(c),
        }
    }

    async fn stop(self) -> (LoadReport, LoadReport) {
        (self.keep_alive.stop().await, self.fresh.stop().await)
    }
}

fn assert_none_failed(what: &str, (keep_alive, fresh): &(LoadReport, LoadReport)) {
    for (kind, r) in [("keep-alive", keep_alive), ("new connections", fresh)] {
        assert!(
            r.ok > 50,
            "{what}: too little {kind} traffic to judge: {r:?}"
        );
        assert_eq!(r.failed, 0, "{what}: {kind} requests failed: {r:?}");
    }
}

async fn deployed(env: &Arc<Env>) {
    let e = env.clone();
    blocking(move || e.ferry_ok(&["deploy", "web", "--version", "v1"])).await;
}

/// Deploy v2 after the change, through the (new) control plane: it still
/// rolls releases, and the load sees v2.
async fn still_deploys(env: &Arc<Env>, loads: &Loads) {
    let e = env.clone();
    blocking(move || e.ferry_ok(&["deploy", "web", "--version", "v2"])).await;
    assert_eq!(
        versions_now(&loads.keep_alive, Duration::from_millis(500)).await,
        vec!["v2".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_control_plane_drops_no_request_and_a_restart_reattaches() {
    let env = Arc::new(Env::start(spec()));
    deployed(&env).await;
    let dp = env.dataplane_pid().expect("a data-plane process runs");
    let loads = Loads::start(&env);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut env = Arc::try_unwrap(env).ok().expect("one owner");
    env.kill9();
    // Served by the data plane alone for a while.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = env.ferry_code(&["status"], 1);
    assert!(
        out.contains(&format!("the data plane (pid {dp}")) && out.contains("still serving"),
        "{out}"
    );
    env.start_daemon();
    let h = blocking_health(&env).await;
    assert_eq!(
        h["data_plane"]["pid"], dp,
        "re-attached, not restarted: {h}"
    );
    assert_eq!(h["data_plane"]["attached"], true, "{h}");
    let env = Arc::new(env);
    still_deploys(&env, &loads).await;
    assert_none_failed("kill -9 of the control plane", &loads.stop().await);
}

async fn blocking_health(env: &Env) -> serde_json::Value {
    let api = env.api();
    let token = env.token();
    blocking(move || {
        reqwest::blocking::Client::new()
            .get(format!("{api}/health"))
            .bearer_auth(token)
            .send()
            .unwrap()
            .json::<serde_json::Value>()
            .unwrap()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_drops_no_request() {
    let env = Arc::new(Env::start(spec()));
    deployed(&env).await;
    let dp = env.dataplane_pid().unwrap();
    let instances = env.marked_processes();
    let loads = Loads::start(&env);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut env = Arc::try_unwrap(env).ok().expect("one owner");
    env.stop();
    assert_eq!(env.dataplane_pid(), Some(dp), "SIGTERM left the data plane");
    assert_eq!(env.marked_processes(), instances, "and the instances");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    env.start_daemon();
    let env = Arc::new(env);
    still_deploys(&env, &loads).await;
    assert_eq!(env.dataplane_pid(), Some(dp));
    assert_none_failed("SIGTERM and ferry serve again", &loads.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_to_another_binary_drops_no_request() {
    let env = Arc::new(Env::start(spec()));
    deployed(&env).await;
    let dp = env.dataplane_pid().unwrap();
    let cp = env.daemon.as_ref().unwrap().id() as i32;
    let next = env.dir.path().join("bin").join("ferry-next");
    std::fs::create_dir_all(next.parent().unwrap()).unwrap();
    std::fs::copy(FERRY, &next).unwrap();
    let loads = Loads::start(&env);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let e = env.clone();
    let n = next.clone();
    let out = blocking(move || e.ferry_ok(&["upgrade", "--binary", n.to_str().unwrap()])).await;
    assert!(out.contains("upgraded: control plane pid"), "{out}");
    let new_dp = env.dataplane_pid().expect("a data plane");
    assert_ne!(new_dp, dp, "a new data plane took over");
    let exe = |pid: i32| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe(new_dp), next, "the data plane runs the new binary");
    assert_eq!(exe(cp), next, "the control plane re-executed it (same pid)");
    // The old data plane finished its connections and exited.
    wait_for(
        Duration::from_secs(35),
        "the old data plane to exit",
        || std::fs::read_to_string(format!("/proc/{dp}/stat")).map_or(true, |s| s.contains(") Z")),
    );
    still_deploys(&env, &loads).await;
    assert_none_failed("ferry upgrade", &loads.stop().await);
}

/// SIGHUP (what a service manager's reload can send) is `ferry upgrade`
/// to the binary `ferry serve` was started from, as it is on disk now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_upgrades_in_place_and_drops_no_request() {
    let env = Arc::new(Env::start(spec()));
    deployed(&env).await;
    let dp = env.dataplane_pid().unwrap();
    let cp = env.daemon.as_ref().unwrap().id() as i32;
    let before = blocking_health(&env).await;
    let loads = Loads::start(&env);
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(cp, Signal::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let e = env.clone();
        let h = blocking(move || {
            let api = e.api();
            let token = e.token();
            reqwest::blocking::Client::new()
                .get(format!("{api}/health"))
                .bearer_auth(token)
                .send()
                .ok()?
                .json::<serde_json::Value>()
                .ok()
        })
        .await;
        if let Some(h) = h
            && h["control_plane"]["started_at"] != before["control_plane"]["started_at"]
        {
            break h;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the control plane did not re-execute:\n{}",
            env.daemon_log()
        );
    };
    assert_eq!(after["control_plane"]["pid"], cp, "same pid: {after}");
    assert_ne!(env.dataplane_pid(), Some(dp), "a new data plane took over");
    still_deploys(&env, &loads).await;
    assert_none_failed("SIGHUP", &loads.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_while_the_control_plane_is_away_loses_no_request() {
    let env = Arc::new(Env::start(spec()));
    deployed(&env).await;
    let loads = Loads::start(&env);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut env = Arc::try_unwrap(env).ok().expect("one owner");
    env.kill9();
    let (victim, _) = env.marked_processes()[0];
    signal_group(victim, Signal::SIGKILL);
    // The survivors take its share while nobody manages the service.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let report = (loads.keep_alive.report(), loads.fresh.report());
    assert_none_failed("an instance killed, control plane away", &report);
    // The control plane comes back and starts a replacement.
    env.start_daemon();
    wait_for(Duration::from_secs(20), "3 instances again", || {
        env.marked_processes().len() == 3
    });
    assert_none_failed("after the restart", &loads.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_data_plane_is_replaced_and_its_failures_are_bounded() {
    let env = Arc::new(Env::start(spec()));
    deployed(&env).await;
    let dp = env.dataplane_pid().unwrap();
    let loads = Loads::start(&env);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = (loads.keep_alive.report(), loads.fresh.report());
    signal(dp, Signal::SIGKILL);
    let killed = std::time::Instant::now();
    wait_for(Duration::from_secs(10), "a new data plane", || {
        env.dataplane_pid().is_some_and(|p| p != dp)
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (keep_alive, fresh) = loads.stop().await;
    let failed = keep_alive.failed + fresh.failed - before.0.failed - before.1.failed;
    // What the dead process had in flight (at most one request per
    // connection of the 12) fails; new connections wait in the kernel for
    // the next data plane.
    eprintln!(
        "kill -9 of the data plane: {failed} of {} requests failed",
        keep_alive.sent + fresh.sent
    );
    assert!(failed <= 12, "{failed} failed: {keep_alive:?} {fresh:?}");
    assert!(keep_alive.ok + fresh.ok > before.0.ok + before.1.ok + 50);
    let h = blocking_health(&env).await;
    assert_eq!(h["data_plane"]["restarts"], 1, "{h}");
    assert!(killed.elapsed() < Duration::from_secs(15));
    // The dead one's control socket is cleaned up; the live one's stays.
    let sockets: Vec<String> = std::fs::read_dir(env.data_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("dataplane-") && n.ends_with(".sock"))
        .collect();
    assert_eq!(sockets.len(), 1, "{sockets:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_that_cannot_start_leaves_the_old_processes_serving() {
    let env = Arc::new(Env::start(spec()));
    deployed(&env).await;
    let dp = env.dataplane_pid().unwrap();
    let loads = Loads::start(&env);
    // Not ferry at all.
    let e = env.clone();
    let out = blocking(move || e.ferry_code(&["upgrade", "--binary", "/bin/false"], 1)).await;
    assert!(out.contains("/bin/false does not run"), "{out}");
    // Says it is ferry, but its data plane never comes up.
    let fake = env.dir.path().join("fake-ferry");
    std::fs::write(
        &fake,
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'ferry 9.9.9'; exit 0; fi\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let e = env.clone();
    let f = fake.clone();
    let out =
        blocking(move || e.ferry_code(&["upgrade", "--binary", f.to_str().unwrap()], 1)).await;
    assert!(out.contains("did not start"), "{out}");
    assert!(out.contains("keeps serving"), "{out}");
    assert_eq!(
        env.dataplane_pid(),
        Some(dp),
        "the old data plane serves on"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    still_deploys(&env, &loads).await;
    assert_none_failed("failed upgrades", &loads.stop().await);
    let audit = env.ferry_ok(&["audit"]);
    assert!(audit.contains("upgrade"), "{audit}");
}

/// Programs such as nginx and PostgreSQL write their process title over
/// their environment, Ferry's marker with it. Such an instance is still
/// found after a restart (by pid and start time) and adopted, not started
/// again beside itself: here a Perl wrapper that sets `$0` and runs the
/// demo app as its child, as nginx's master runs its workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_that_overwrite_their_environment_are_adopted_after_a_kill_9() {
    let env = Arc::new(Env::start(Spec {
        command: Some(format!(
            r#"["perl", "-e", "$0 = 'web-instance ' . ('x' x 4000); exit(system(@ARGV) >> 8)", "{FERRY}", "demo-app"]"#
        )),
        ..spec()
    }));
    deployed(&env).await;
    let pids = |env: &Env| -> Vec<i64> {
        let mut p: Vec<i64> = status(env)["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["pid"].as_i64().unwrap())
            .collect();
        p.sort();
        p
    };
    let before = pids(&env);
    assert_eq!(before.len(), 3);
    for pid in &before {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(
            !String::from_utf8_lossy(&environ).contains("FERRY_INSTANCE="),
            "the leader's marker is overwritten, or this tests nothing"
        );
    }
    let loads = Loads::start(&env);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut env = Arc::try_unwrap(env).ok().expect("one owner");
    env.kill9();
    env.start_daemon();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(pids(&env), before, "adopted, not started again");
    let s = status(&env);
    for i in s["instances"].as_array().unwrap() {
        assert_eq!(i["restarts"], 0, "{s}");
        assert_eq!(i["state"], "serving", "{s}");
    }
    assert_none_failed("kill -9 and restart", &loads.stop().await);
}

/// `ferry shutdown` stops the data plane first; with nothing left in
/// flight, the instances' drains do not wait out `drain_timeout` (60 s
/// here), and the command returns well within its own 20 s.
#[test]
fn shutdown_does_not_wait_out_the_drain_timeout() {
    let mut env = Env::start(Spec {
        drain_timeout: "60s",
        ..spec()
    });
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    let dp = env.dataplane_pid().unwrap();
    let daemon = env.daemon.take().unwrap();
    let out = env.ferry_ok(&["shutdown", "--timeout", "20s"]);
    assert!(out.contains("stopped"), "{out}");
    // `ferry shutdown` returned only once the daemon had exited; reap it.
    let mut daemon = daemon;
    let _ = daemon.wait();
    assert!(env.marked_processes().is_empty(), "instances stopped");
    assert!(
        std::fs::read_to_string(format!("/proc/{dp}/stat")).map_or(true, |s| s.contains(") Z")),
        "the data plane exited"
    );
}
