//! The test harness itself: a real cluster, one database per test.

use crate::support::{cluster, fresh_db};

#[tokio::test]
async fn two_tests_get_two_different_databases() {
    let a = fresh_db().await;
    let b = fresh_db().await;
    assert_ne!(a.name, b.name);
    let ca = a.client().await;
    let cb = b.client().await;
    ca.batch_execute("CREATE TABLE only_in_a (x int)")
        .await
        .unwrap();
    let in_b: i64 = cb
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        in_b, 0,
        "a table made in one test's database is visible in another's"
    );
    let name: String = ca
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, a.name);
}

#[tokio::test]
async fn cluster_is_ready_for_logical_replication() {
    let db = fresh_db().await;
    let c = db.client().await;
    let get = |name: &'static str| {
        let c = &c;
        async move {
            c.query_one(&format!("SHOW {name}"), &[])
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    assert_eq!(get("wal_level").await, "logical");
    assert!(get("max_replication_slots").await.parse::<u32>().unwrap() >= 10);
    assert!(get("max_wal_senders").await.parse::<u32>().unwrap() >= 10);
    assert_eq!(get("fsync").await, "off");
    // The unix socket lives in the cluster's own temp dir.
    assert!(cluster()
        .socket_dir()
        .join(format!(".s.PGSQL.{}", cluster().port()))
        .exists());
}

/// A throwaway cluster runs in a process group of its own: a terminal's
/// Ctrl-C (SIGINT to the foreground group) reaches the program using it,
/// which stops its work and then the cluster; the server does not vanish
/// under a running bridge (the demo's teardown used to log WARNs).
#[test]
fn a_throwaway_cluster_is_outside_our_process_group() {
    let c = cluster();
    let pid_file = std::fs::read_to_string(c.data_dir().join("postmaster.pid")).unwrap();
    let postmaster = pid_file.lines().next().unwrap().trim().to_string();
    let pgid = |pid: &str| {
        let out = std::process::Command::new("ps")
            .args(["-o", "pgid=", "-p", pid])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let ours = pgid(&std::process::id().to_string());
    let theirs = pgid(&postmaster);
    assert!(!theirs.is_empty(), "the postmaster {postmaster} runs");
    assert_ne!(ours, theirs);
}

/// A `pg::Session` ends its server session when dropped (its driver task
/// is stopped) and when closed (cleanly).
#[tokio::test]
async fn a_session_ends_on_drop_and_on_close() {
    use godata_bridge::pg::Session;
    let db = fresh_db().await;
    let watcher = db.client().await;
    let tls: godata_bridge::pg::tls::Db = db.config.clone().into();
    let gone = |pid: i32| {
        let w = &watcher;
        async move {
            !w.query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
                &[&pid],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
        }
    };
    for close in [false, true] {
        let s = Session::connect(&tls, "test-session", false).await.unwrap();
        let pid: i32 = s
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert!(!gone(pid).await);
        match close {
            true => s.close().await,
            false => drop(s),
        }
        crate::support::wait_for(
            "the session to end",
            std::time::Duration::from_secs(10),
            || gone(pid),
        )
        .await;
    }
}
