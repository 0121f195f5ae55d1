//! The kernels' thread pool: persistent workers that take chunks of one parallel loop at a
//! time, tuned for many short loops (a training step runs hundreds) on machines whose cores
//! may be shared.
//!
//! Why not candle's barrier pool or rayon (measured on 2 cores, BENCHMARKS.md): candle's pool
//! spins without yielding, and its caller waits for every worker, so when a worker has no core
//! (a concurrent build, a container CPU limit) the caller burns its own core waiting and
//! training drops to a seventh of its speed. rayon's workers go to sleep quickly, and waking them
//! for every short loop cost LoRA training a third of its speed on idle cores. Here:
//! - idle workers spin briefly, then spin with `yield_now` (an idle-but-ready worker gives its
//!   core to anyone who needs it), then park;
//! - a worker joins a loop only while it is open; the caller runs chunks itself and closes the
//!   loop when none are left, then waits only for workers that are inside a chunk. A worker
//!   that gets no core in time simply misses the loop, and the caller does the work.

use std::any::Any;
use std::cell::Cell;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// Bit of `state` set while a loop accepts workers.
const OPEN: u64 = 1 << 32;
/// Bits of `state` counting the workers inside the loop.
const ACTIVE: u64 = OPEN - 1;
/// `state` keeps the loop's generation above bit 33.
const GEN_SHIFT: u32 = 33;
/// Pure spins before an idle worker starts yielding.
const SPINS: u32 = 2_000;
/// How long an idle worker stays ready (spinning with yields) before it parks.
const READY_FOR: Duration = Duration::from_millis(2);

thread_local! {
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

/// One parallel loop, on the caller's stack while it runs.
struct Job {
    run: unsafe fn(*const (), Range<usize>),
    data: *const (),
    n: usize,
    chunk: usize,
    cursor: AtomicUsize,
}

impl Job {
    /// Takes chunks until none are left.
    fn work(&self) {
        loop {
            let start = self.cursor.fetch_add(self.chunk, Ordering::Relaxed);
            if start >= self.n {
                return;
            }
            // SAFETY: `data` points at the closure of type matching `run` (see `run_chunked`),
            // alive until the caller has seen every worker leave.
            unsafe { (self.run)(self.data, start..self.n.min(start + self.chunk)) };
        }
    }
}

unsafe fn trampoline<F: Fn(Range<usize>)>(data: *const (), r: Range<usize>) {
    // SAFETY: `data` was made from `&F` by `run_chunked`.
    unsafe { (*(data as *const F))(r) }
}

struct Shared {
    /// generation << 33 | OPEN | workers inside.
    state: AtomicU64,
    job: AtomicPtr<Job>,
    sleepers: AtomicUsize,
    stop: AtomicBool,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

/// A persistent pool; the caller of [`Pool::run_chunked`] takes part in the loop.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<Thread>,
    /// Serializes callers; holds the last generation.
    call: Mutex<u64>,
}

impl Pool {
    /// A pool in which `threads` threads (the caller included) run each loop.
    pub fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            sleepers: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            panic: Mutex::new(None),
        });
        let workers = (1..threads.max(1))
            .filter_map(|i| {
                let shared = shared.clone();
                thread::Builder::new()
                    .name(format!("llamaduo-cpu-{i}"))
                    .spawn(move || worker(&shared))
                    .ok()
                    .map(|h| h.thread().clone())
            })
            .collect();
        Self {
            shared,
            workers,
            call: Mutex::new(0),
        }
    }

    /// Threads that run a loop, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f` on chunks of `0..n` (each index exactly once), on this thread and the
    /// workers that join in time. A panic in `f` is re-raised here after all workers left.
    pub fn run_chunked<F: Fn(Range<usize>) + Sync>(&self, n: usize, f: F) {
        if n == 0 {
            return;
        }
        if self.workers.is_empty() || n == 1 || IN_POOL.with(Cell::get) {
            f(0..n);
            return;
        }
        let mut generation = match self.call.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *generation = (*generation + 1) & (u64::MAX >> GEN_SHIFT);
        let job = Job {
            run: trampoline::<F>,
            data: &f as *const F as *const (),
            n,
            chunk: n.div_ceil(self.threads() * 4).max(1),
            cursor: AtomicUsize::new(0),
        };
        let s = &self.shared;
        s.job
            .store(&job as *const Job as *mut Job, Ordering::Relaxed);
        // SeqCst pairs with the sleepers' check in `worker` (neither misses the other).
        s.state
            .store((*generation << GEN_SHIFT) | OPEN, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            self.workers.iter().for_each(Thread::unpark);
        }
        {
            // Closes the loop and waits for the workers inside it even if `f` panics here,
            // because they use `job` and `f` on this stack frame. Nested loops from `f` run
            // inline on this thread.
            let _close = Close(s);
            let _inline = InPool::enter();
            job.work();
        }
        let panic = match s.panic.lock() {
            Ok(mut p) => p.take(),
            Err(p) => p.into_inner().take(),
        };
        drop(generation);
        if let Some(p) = panic {
            std::panic::resume_unwind(p);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.workers.iter().for_each(Thread::unpark);
    }
}

/// Marks this thread as running a loop's chunk until dropped (nested loops run inline).
struct InPool(bool);

impl InPool {
    fn enter() -> Self {
        Self(IN_POOL.with(|f| f.replace(true)))
    }
}

impl Drop for InPool {
    fn drop(&mut self) {
        IN_POOL.with(|f| f.set(self.0));
    }
}

/// Closes the open loop and waits until no worker is inside it.
struct Close<'a>(&'a Shared);

impl Drop for Close<'_> {
    fn drop(&mut self) {
        let s = self.0;
        s.state.fetch_and(!OPEN, Ordering::AcqRel);
        let mut spins = 0u32;
        while s.state.load(Ordering::Acquire) & ACTIVE != 0 {
            if spins < SPINS {
                std::hint::spin_loop();
                spins += 1;
            } else {
                thread::yield_now();
            }
        }
    }
}

fn worker(s: &Shared) {
    IN_POOL.with(|f| f.set(true));
    let mut seen = u64::MAX;
    loop {
        // Wait for an open loop of a generation this worker has not joined, then join it.
        let mut spins = 0u32;
        let mut ready_since: Option<Instant> = None;
        loop {
            if s.stop.load(Ordering::Relaxed) {
                return;
            }
            let st = s.state.load(Ordering::Acquire);
            if st & OPEN != 0 && st >> GEN_SHIFT != seen {
                if s.state
                    .compare_exchange_weak(st, st + 1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    seen = st >> GEN_SHIFT;
                    break;
                }
                continue;
            }
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else if ready_since.get_or_insert_with(Instant::now).elapsed() < READY_FOR {
                thread::yield_now();
            } else {
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                let st = s.state.load(Ordering::SeqCst);
                let pending = st & OPEN != 0 && st >> GEN_SHIFT != seen;
                if !pending && !s.stop.load(Ordering::SeqCst) {
                    thread::park();
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
                spins = 0;
                ready_since = None;
            }
        }
        // SAFETY: the loop was open when this worker joined, so the caller is waiting in
        // `Close` for it to leave: the job is alive.
        let job = unsafe { &*s.job.load(Ordering::Acquire) };
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.work())) {
            let mut slot = match s.panic.lock() {
                Ok(g) => g,
                Err(g) => g.into_inner(),
            };
            slot.get_or_insert(p);
        }
        s.state.fetch_sub(1, Ordering::Release);
    }
}

/// The process's pool, sized by `LLAMADUO_NUM_THREADS`, else `RAYON_NUM_THREADS`, else the
/// CPUs this process may use (cgroup CPU limits included).
pub fn global() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(configured_threads()))
}

fn configured_threads() -> usize {
    ["LLAMADUO_NUM_THREADS", "RAYON_NUM_THREADS"]
        .iter()
        .find_map(|v| {
            std::env::var(v)
                .ok()?
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
        })
        .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_once_across_many_loops() {
        let pool = Pool::new(3);
        for n in [1usize, 2, 7, 1000, 65_537] {
            for _ in 0..50 {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.run_chunked(n, |r| {
                    for i in r {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    }
                });
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                    "n = {n}"
                );
            }
        }
    }

    #[test]
    fn workers_take_part_and_nested_loops_run_inline() {
        let pool = Pool::new(2);
        let worker_chunks = AtomicUsize::new(0);
        // Slow chunks, so the worker joins while the loop is open.
        pool.run_chunked(64, |_| {
            let on_worker = thread::current()
                .name()
                .is_some_and(|n| n.starts_with("llamaduo-cpu"));
            if on_worker {
                worker_chunks.fetch_add(1, Ordering::Relaxed);
            }
            // A loop inside a loop (on the caller or a worker) runs inline, no deadlock.
            let inner = AtomicUsize::new(0);
            pool.run_chunked(10, |r| {
                inner.fetch_add(r.len(), Ordering::Relaxed);
            });
            assert_eq!(inner.load(Ordering::Relaxed), 10);
            thread::sleep(Duration::from_millis(2));
        });
        assert!(worker_chunks.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn a_panic_in_a_chunk_reaches_the_caller_and_the_pool_still_works() {
        let pool = Pool::new(2);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run_chunked(100, |r| {
                if r.contains(&57) {
                    panic!("chunk with 57");
                }
            })
        }));
        assert!(caught.is_err());
        let sum = AtomicUsize::new(0);
        pool.run_chunked(100, |r| {
            sum.fetch_add(r.len(), Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 100);
    }
}
