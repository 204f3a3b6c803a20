//! A fair share of the data lane between branches.
//!
//! Data-lane jobs may wait on the backstore for as long as it takes. Without
//! a limit, one branch whose jobs stall (a stalled disk under a big write, a
//! slow copy-on-write of a large file) takes every data worker, and an open
//! or a truncate in another branch queues behind it until its deadline. So a
//! branch may have at most [`FairShare::cap`] data jobs on the workers at
//! once, half of them; its further jobs wait, in order, in a queue of its
//! own, and move to the lane one by one as its running jobs end. Another
//! branch then always finds a worker free or soon free of jobs that are not
//! its own.
//!
//! The request deadline is set when the request arrives, so a job waiting
//! here still fails with ETIMEDOUT at its deadline.

use agentfs_core::FsCore;
use agentfs_transport::{FsCoreTransport, Job, Lane, TransportError};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// The data jobs of one branch.
#[derive(Default)]
struct Queue {
    /// Jobs handed to the lane and not yet ended.
    running: usize,
    /// Jobs waiting for one of those to end.
    waiting: VecDeque<Job>,
}

/// Data-lane admission by branch; see the module header.
pub struct FairShare {
    transport: Arc<dyn FsCoreTransport>,
    cap: usize,
    /// By branch id (0 for requests that name no branch). Leaf lock, never
    /// held while a job runs or is handed to the transport.
    queues: Mutex<HashMap<u64, Queue>>,
}

impl FairShare {
    /// Share `transport`'s data lane: each branch gets at most half of its
    /// workers (at least one).
    pub fn new(transport: Arc<dyn FsCoreTransport>) -> Arc<FairShare> {
        let workers = transport.stats().data.workers;
        Arc::new(FairShare {
            transport,
            cap: (workers / 2).max(1),
            queues: Mutex::new(HashMap::new()),
        })
    }

    /// How many data jobs one branch may have on the workers at once.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Run `job` on the data lane for branch `key`, now if the branch has
    /// fewer than `cap` jobs running, else after those before it.
    pub fn submit(self: &Arc<Self>, key: u64, job: Job) -> Result<(), TransportError> {
        {
            let mut queues = self.queues.lock();
            let q = queues.entry(key).or_default();
            if q.running >= self.cap {
                q.waiting.push_back(job);
                return Ok(());
            }
            q.running += 1;
        }
        let sent = self.hand_over(key, job);
        if sent.is_err() {
            self.ended(key);
        }
        sent
    }

    /// Give `job` to the lane, wrapped so that its end (or its panic) lets
    /// the branch's next job go.
    fn hand_over(self: &Arc<Self>, key: u64, job: Job) -> Result<(), TransportError> {
        let share = Arc::clone(self);
        let wrapped: Job = Box::new(move |core: &FsCore| {
            let _end = Ended { share, key };
            job(core);
        });
        self.transport.submit(Lane::Data, wrapped)
    }

    /// One of branch `key`'s running jobs ended: start its next, if any.
    fn ended(self: &Arc<Self>, key: u64) {
        loop {
            let next = {
                let mut queues = self.queues.lock();
                let Some(q) = queues.get_mut(&key) else {
                    return;
                };
                match q.waiting.pop_front() {
                    Some(job) => job,
                    None => {
                        q.running -= 1;
                        if q.running == 0 {
                            queues.remove(&key);
                        }
                        return;
                    }
                }
            };
            // The slot of the job that ended passes to `next`. A lane that
            // refuses it is shut down: `next` (and its reply) is dropped,
            // which answers EIO, and the slot passes on again.
            if self.hand_over(key, next).is_ok() {
                return;
            }
        }
    }

    /// Jobs of branch `key` running and waiting (for tests and status).
    pub fn load(&self, key: u64) -> (usize, usize) {
        self.queues
            .lock()
            .get(&key)
            .map(|q| (q.running, q.waiting.len()))
            .unwrap_or_default()
    }
}

/// Ends a job's turn when dropped: after the job returns or while it unwinds.
struct Ended {
    share: Arc<FairShare>,
    key: u64,
}

impl Drop for Ended {
    fn drop(&mut self) {
        self.share.ended(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentfs_core::backstore::mem::MemBackstore;
    use agentfs_core::{CoreConfig, ProcFs};
    use agentfs_transport::{InProcessTransport, TransportConfig};
    use std::sync::mpsc;
    use std::time::Duration;

    fn share(data_workers: usize) -> Arc<FairShare> {
        let core = Arc::new(FsCore::new(
            Arc::new(MemBackstore::new()),
            CoreConfig {
                process_table: Box::new(ProcFs),
                default_branch_name: "main".into(),
            },
        ));
        let transport = InProcessTransport::new(
            core,
            TransportConfig {
                meta_workers: 1,
                data_workers,
            },
        );
        FairShare::new(transport)
    }

    /// A job that blocks until `release` gets a message, then reports `tag`.
    fn blocking(
        release: &Arc<Mutex<mpsc::Receiver<()>>>,
        done: &mpsc::Sender<u32>,
        tag: u32,
    ) -> Job {
        let (release, done) = (Arc::clone(release), done.clone());
        Box::new(move |_: &FsCore| {
            let _ = release.lock().recv_timeout(Duration::from_secs(30));
            let _ = done.send(tag);
        })
    }

    #[test]
    fn a_branch_whose_jobs_stall_leaves_workers_to_the_others() {
        let share = share(4);
        assert_eq!(share.cap(), 2);
        let (release_tx, release_rx) = mpsc::channel();
        let release = Arc::new(Mutex::new(release_rx));
        let (done_tx, done_rx) = mpsc::channel();
        // Branch 1 sends ten jobs that all wait: two run, eight wait here.
        for i in 0..10 {
            share.submit(1, blocking(&release, &done_tx, i)).unwrap();
        }
        assert_eq!(
            share.load(1).1,
            8,
            "jobs past the cap wait in the branch's queue"
        );
        // Branch 2's job runs although branch 1 has work queued.
        let done = done_tx.clone();
        share
            .submit(2, Box::new(move |_: &FsCore| done.send(100).unwrap()))
            .unwrap();
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(30)), Ok(100));
        // Releasing branch 1 lets all its jobs through, in order per slot.
        for _ in 0..10 {
            release_tx.send(()).unwrap();
        }
        let mut tags: Vec<u32> = (0..10)
            .map(|_| done_rx.recv_timeout(Duration::from_secs(30)).unwrap())
            .collect();
        tags.sort();
        assert_eq!(tags, (0..10).collect::<Vec<_>>());
        // A job reports before its turn ends: give the last ones a moment.
        let idle = (0..1000).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            share.load(1) == (0, 0)
        });
        assert!(
            idle,
            "the branch's queue is gone when idle: {:?}",
            share.load(1)
        );
    }

    #[test]
    fn a_panicking_job_still_passes_its_turn_on() {
        let share = share(2);
        assert_eq!(share.cap(), 1);
        let (done_tx, done_rx) = mpsc::channel();
        share
            .submit(7, Box::new(|_: &FsCore| panic!("job fails")))
            .unwrap();
        let done = done_tx.clone();
        share
            .submit(7, Box::new(move |_: &FsCore| done.send(1).unwrap()))
            .unwrap();
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(30)), Ok(1));
    }
}
