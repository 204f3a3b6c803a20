//! Tests of the pool machinery with stand-in contexts (no FsCore).
//!
//! Nothing here asserts on elapsed time: every wait is a channel or a
//! condition polled with a generous deadline, which only turns a hang into a
//! failure.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use super::{Pool, PoolJob};
use crate::{Lane, TransportConfig, TransportError};

/// How long a test waits for something that should happen promptly.
const PATIENCE: Duration = Duration::from_secs(30);

fn config(meta_workers: usize, data_workers: usize) -> TransportConfig {
    TransportConfig {
        meta_workers,
        data_workers,
    }
}

fn job<C>(f: impl FnOnce(&C) + Send + 'static) -> PoolJob<C> {
    Box::new(f)
}

fn recv<T>(rx: &Receiver<T>, what: &str) -> T {
    match rx.recv_timeout(PATIENCE) {
        Ok(v) => v,
        Err(RecvTimeoutError::Timeout) => panic!("timed out waiting for {what}"),
        Err(RecvTimeoutError::Disconnected) => panic!("{what}: sender dropped without sending"),
    }
}

/// Sets its flag when dropped: stands in for a captured fuser reply.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Poll `cond` until it holds; fail the test if it does not within PATIENCE.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::yield_now();
    }
}

#[test]
fn ten_thousand_jobs_from_many_threads_all_complete() {
    let pool =
        Pool::try_new(Arc::new(AtomicU64::new(0)), TransportConfig::default()).expect("pool");
    let threads = 8;
    let per_thread = 1250;
    thread::scope(|s| {
        for t in 0..threads {
            let pool = &pool;
            s.spawn(move || {
                for i in 0..per_thread {
                    let lane = if (t + i) % 2 == 0 {
                        Lane::Meta
                    } else {
                        Lane::Data
                    };
                    pool.submit(
                        lane,
                        job(|n: &AtomicU64| {
                            n.fetch_add(1, Ordering::SeqCst);
                        }),
                    )
                    .expect("submit");
                }
            });
        }
    });
    pool.shutdown();
    assert_eq!(pool.context().load(Ordering::SeqCst), 10_000);
    let stats = pool.stats();
    assert_eq!(stats.meta.submitted + stats.data.submitted, 10_000);
    assert_eq!(stats.meta.submitted, 5_000);
    for lane in [&stats.meta, &stats.data] {
        assert_eq!(lane.completed, lane.submitted);
        assert_eq!(lane.panicked, 0);
        assert_eq!(lane.queued, 0);
    }
    assert_eq!(stats.meta.workers, 4);
    assert_eq!(stats.data.workers, 8);
}

#[test]
fn jobs_run_on_named_workers_of_their_lane() {
    let pool = Pool::try_new(Arc::new(()), config(2, 3)).expect("pool");
    let (tx, rx) = mpsc::channel();
    for lane in Lane::ALL {
        let tx = tx.clone();
        pool.submit(
            lane,
            job(move |_: &()| {
                let _ = tx.send((lane, thread::current().name().map(str::to_owned)));
            }),
        )
        .expect("submit");
    }
    for _ in Lane::ALL {
        let (lane, name) = recv(&rx, "a job's thread name");
        let name = name.expect("workers are named");
        assert!(
            name.starts_with(&format!("agentfs-{lane}-")),
            "{name} runs a {lane} job"
        );
    }
}

#[test]
fn zero_workers_in_config_still_gives_each_lane_one() {
    let pool = Pool::try_new(Arc::new(()), config(0, 0)).expect("pool");
    let (tx, rx) = mpsc::channel();
    for lane in Lane::ALL {
        let tx = tx.clone();
        pool.submit(
            lane,
            job(move |_: &()| {
                let _ = tx.send(());
            }),
        )
        .expect("submit");
    }
    recv(&rx, "first job");
    recv(&rx, "second job");
    assert_eq!(pool.stats().meta.workers, 1);
    assert_eq!(pool.stats().data.workers, 1);
}

#[test]
fn panicking_job_fails_alone_and_the_worker_goes_on() {
    // One worker per lane, so the job after the panic runs on the very thread
    // that caught it.
    let pool = Pool::try_new(Arc::new(()), config(1, 1)).expect("pool");
    let reply_dropped = Arc::new(AtomicBool::new(false));
    let reply = DropFlag(Arc::clone(&reply_dropped));
    pool.submit(
        Lane::Meta,
        job(move |_: &()| {
            let _reply = &reply;
            panic!("injected failure");
        }),
    )
    .expect("submit panicking job");

    let (tx, rx) = mpsc::channel();
    let seen = Arc::clone(&reply_dropped);
    pool.submit(
        Lane::Meta,
        job(move |_: &()| {
            let _ = tx.send((
                seen.load(Ordering::SeqCst),
                thread::current().name().map(str::to_owned),
            ));
        }),
    )
    .expect("submit next job");

    let (dropped_before_next_job, name) = recv(&rx, "the job after the panic");
    assert!(
        dropped_before_next_job,
        "the panicking job's captures were dropped by unwinding"
    );
    assert_eq!(name.as_deref(), Some("agentfs-meta-0"));
    // The panic was counted before the worker took the next job.
    let stats = pool.stats();
    assert_eq!(stats.meta.panicked, 1);
    assert_eq!(stats.data.panicked, 0);

    pool.shutdown();
    let stats = pool.stats();
    assert_eq!(
        (
            stats.meta.submitted,
            stats.meta.completed,
            stats.meta.panicked
        ),
        (2, 1, 1)
    );
}

#[test]
fn blocked_data_job_does_not_delay_a_meta_job() {
    let pool = Pool::try_new(Arc::new(()), config(1, 1)).expect("pool");
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (data_done_tx, data_done_rx) = mpsc::channel();
    pool.submit(
        Lane::Data,
        job(move |_: &()| {
            let _ = started_tx.send(());
            // Released only after the meta job has completed; the timeout turns
            // a lane that waits on this one into a test failure, not a hang.
            let released = release_rx.recv_timeout(PATIENCE).is_ok();
            let _ = data_done_tx.send(released);
        }),
    )
    .expect("submit data job");
    recv(&started_rx, "the data job to occupy the only data worker");

    // A second data job queues behind the blocked one.
    let (second_tx, second_rx) = mpsc::channel();
    pool.submit(
        Lane::Data,
        job(move |_: &()| {
            let _ = second_tx.send(());
        }),
    )
    .expect("submit data job");
    assert_eq!(pool.stats().data.queued, 1);

    let (meta_tx, meta_rx) = mpsc::channel();
    pool.submit(
        Lane::Meta,
        job(move |_: &()| {
            let _ = meta_tx.send(());
        }),
    )
    .expect("submit meta job");
    recv(&meta_rx, "the meta job while the data lane is blocked");

    release_tx.send(()).expect("data job is waiting");
    assert!(
        recv(&data_done_rx, "the data job"),
        "data job was released, not timed out"
    );
    recv(&second_rx, "the queued data job");
}

#[test]
fn a_batch_stuck_behind_a_slow_job_is_stolen_by_an_idle_worker() {
    // Worker A may take the slow job plus a batch of the quick ones into its
    // own deque; the quick ones must still run (on the other worker) while
    // the slow one blocks.
    for _round in 0..20 {
        let pool = Pool::try_new(Arc::new(()), config(1, 2)).expect("pool");
        wait_until("both data workers are idle", || {
            pool.sleepers(Lane::Data) == 2
        });
        let (release_tx, release_rx) = mpsc::channel::<()>();
        pool.submit(
            Lane::Data,
            job(move |_: &()| {
                let _ = release_rx.recv_timeout(PATIENCE);
            }),
        )
        .expect("submit slow job");
        let quick = 20;
        let (done_tx, done_rx) = mpsc::channel();
        for _ in 0..quick {
            let done_tx = done_tx.clone();
            pool.submit(
                Lane::Data,
                job(move |_: &()| {
                    let _ = done_tx.send(());
                }),
            )
            .expect("submit");
        }
        for _ in 0..quick {
            recv(&done_rx, "a quick job while the slow one blocks");
        }
        release_tx.send(()).expect("slow job is waiting");
        pool.shutdown();
        assert_eq!(pool.stats().data.completed, quick + 1);
    }
}

#[test]
fn shutdown_runs_queued_jobs_then_joins_and_refuses_new_ones() {
    let pool = Arc::new(Pool::try_new(Arc::new(AtomicU64::new(0)), config(1, 1)).expect("pool"));
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    pool.submit(
        Lane::Meta,
        job(move |_: &AtomicU64| {
            let _ = started_tx.send(());
            let _ = release_rx.recv_timeout(PATIENCE);
        }),
    )
    .expect("submit blocking job");
    recv(&started_rx, "the blocking job to start");
    let queued = 100;
    for lane in Lane::ALL {
        for _ in 0..queued {
            pool.submit(
                lane,
                job(|n: &AtomicU64| {
                    let _ = n.fetch_add(1, Ordering::SeqCst);
                }),
            )
            .expect("submit");
        }
    }

    // Shut down while the meta jobs are certainly still queued behind the
    // blocked one.
    let shutdown_done = Arc::new(AtomicBool::new(false));
    let shutter = {
        let (pool, done) = (Arc::clone(&pool), Arc::clone(&shutdown_done));
        thread::Builder::new()
            .name("test-shutdown".into())
            .spawn(move || {
                pool.shutdown();
                done.store(true, Ordering::SeqCst);
            })
            .expect("spawn")
    };

    // Once the lanes close, a submit is refused and its job dropped unrun.
    let deadline = Instant::now() + PATIENCE;
    let mut accepted_meanwhile = 0;
    let (ran, dropped) = loop {
        assert!(
            Instant::now() < deadline,
            "submit never refused after shutdown began"
        );
        let ran = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = DropFlag(Arc::clone(&dropped));
        let ran_in_job = Arc::clone(&ran);
        match pool.submit(
            Lane::Meta,
            job(move |n: &AtomicU64| {
                let _guard = guard;
                ran_in_job.store(true, Ordering::SeqCst);
                n.fetch_add(1, Ordering::SeqCst);
            }),
        ) {
            Ok(()) => accepted_meanwhile += 1,
            Err(TransportError::ShutDown) => break (ran, dropped),
        }
        thread::yield_now();
    };
    assert!(
        dropped.load(Ordering::SeqCst),
        "refused job dropped before submit returned"
    );
    assert!(!ran.load(Ordering::SeqCst), "refused job never runs");
    assert!(
        !shutdown_done.load(Ordering::SeqCst),
        "shutdown waits for the blocked job"
    );
    assert!(
        pool.stats().meta.queued >= queued,
        "meta jobs still queued at shutdown"
    );

    release_tx.send(()).expect("blocking job is waiting");
    shutter.join().expect("shutdown thread");
    assert_eq!(
        pool.context().load(Ordering::SeqCst),
        2 * queued + accepted_meanwhile
    );
    let stats = pool.stats();
    for lane in [&stats.meta, &stats.data] {
        assert_eq!(lane.queued, 0);
        assert_eq!(lane.completed, lane.submitted);
    }
    assert!(!ran.load(Ordering::SeqCst), "refused job never runs");

    // Idempotent, and still refusing.
    pool.shutdown();
    let dropped = Arc::new(AtomicBool::new(false));
    let guard = DropFlag(Arc::clone(&dropped));
    let refused = pool.submit(Lane::Data, job(move |_: &AtomicU64| drop(guard)));
    assert!(matches!(refused, Err(TransportError::ShutDown)));
    assert!(dropped.load(Ordering::SeqCst));
}

#[test]
fn no_wake_up_is_lost_when_idle_workers_get_one_job_at_a_time() {
    let workers = (3, 2);
    let pool = Pool::try_new(Arc::new(()), config(workers.0, workers.1)).expect("pool");
    let submitters = 4;
    for round in 0..100 {
        wait_until("every worker is idle", || {
            pool.sleepers(Lane::Meta) == workers.0 && pool.sleepers(Lane::Data) == workers.1
        });
        let (tx, rx): (Sender<usize>, Receiver<usize>) = mpsc::channel();
        let barrier = Barrier::new(submitters);
        thread::scope(|s| {
            for t in 0..submitters {
                let (pool, barrier, tx) = (&pool, &barrier, tx.clone());
                s.spawn(move || {
                    barrier.wait();
                    let lane = if (round + t) % 2 == 0 {
                        Lane::Meta
                    } else {
                        Lane::Data
                    };
                    pool.submit(
                        lane,
                        job(move |_: &()| {
                            let _ = tx.send(t);
                        }),
                    )
                    .expect("submit");
                });
            }
        });
        drop(tx);
        for _ in 0..submitters {
            recv(&rx, "a job submitted to idle workers");
        }
    }
    pool.shutdown();
    let stats = pool.stats();
    assert_eq!(
        stats.meta.completed + stats.data.completed,
        100 * submitters as u64
    );
}

#[test]
fn single_job_to_single_idle_worker_is_never_lost() {
    let pool = Pool::try_new(Arc::new(()), config(1, 1)).expect("pool");
    let (tx, rx) = mpsc::channel();
    for i in 0..500 {
        wait_until("the worker is idle", || pool.sleepers(Lane::Meta) == 1);
        let tx = tx.clone();
        pool.submit(
            Lane::Meta,
            job(move |_: &()| {
                let _ = tx.send(i);
            }),
        )
        .expect("submit");
        assert_eq!(recv(&rx, "the job"), i);
    }
}

/// The context reports when the last worker has let go of it.
struct Ctx {
    gone: Sender<()>,
    ran: AtomicUsize,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        let _ = self.gone.send(());
    }
}

#[test]
fn pool_dropped_inside_its_own_job_does_not_deadlock() {
    let (gone_tx, gone_rx) = mpsc::channel();
    let pool = Arc::new(
        Pool::try_new(
            Arc::new(Ctx {
                gone: gone_tx,
                ran: AtomicUsize::new(0),
            }),
            config(2, 2),
        )
        .expect("pool"),
    );
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel();
    let in_job = Arc::clone(&pool);
    pool.submit(
        Lane::Data,
        job(move |ctx: &Ctx| {
            let _ = go_rx.recv_timeout(PATIENCE);
            ctx.ran.fetch_add(1, Ordering::SeqCst);
            // The test has dropped its handle: this is the last one, so the
            // pool's Drop (shutdown + join) runs here, on a data worker.
            drop(in_job);
            let _ = done_tx.send(());
        }),
    )
    .expect("submit");
    // Queued behind it on the other lane: still run by the shutdown drain.
    let (meta_tx, meta_rx) = mpsc::channel();
    pool.submit(
        Lane::Meta,
        job(move |_: &Ctx| {
            let _ = meta_tx.send(());
        }),
    )
    .expect("submit");
    drop(pool);
    go_tx.send(()).expect("job is waiting");
    recv(&done_rx, "the job that dropped the pool");
    recv(&meta_rx, "the meta job drained by shutdown");
    // Every worker, the one not joined included, exits and releases the context.
    recv(&gone_rx, "the context to be dropped by the last worker");
}

#[test]
fn no_wake_up_is_lost_when_a_job_arrives_as_the_worker_goes_idle() {
    // Ping-pong: each job is submitted as soon as the previous one has
    // answered. The job keeps its worker busy for a varying while after
    // answering, so over the rounds the next submit lands at every point of
    // the worker's way from its job into its sleep, which is where a
    // wake-up is lost if the idle protocol is wrong.
    let pool = Pool::try_new(Arc::new(()), config(1, 1)).expect("pool");
    let (tx, rx) = mpsc::channel();
    for i in 0..5000u64 {
        for lane in Lane::ALL {
            let tx = tx.clone();
            pool.submit(
                lane,
                job(move |_: &()| {
                    let _ = tx.send((lane, i));
                    for _ in 0..(i * 7919) % 20_000 {
                        std::hint::spin_loop();
                    }
                }),
            )
            .expect("submit");
        }
        let mut got = [recv(&rx, "a ping-pong job"), recv(&rx, "a ping-pong job")];
        got.sort_by_key(|(lane, _)| *lane == Lane::Data);
        assert_eq!(got, [(Lane::Meta, i), (Lane::Data, i)]);
    }
}
