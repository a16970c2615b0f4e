//! How many threads the load generator runs: one decision from the machine's core count and
//! the workload, kept apart so that it can be tested without running anything. It never
//! starts threads itself.

/// Publisher and subscriber thread counts for one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadPlan {
    /// Threads that publisher connections are spread over (round-robin).
    pub publisher_threads: usize,
    /// Threads that reading subscriber connections are spread over (round-robin).
    pub subscriber_threads: usize,
}

impl ThreadPlan {
    /// `cores`: CPUs this process may run on. `publishers` and `readers`: connections that
    /// need a thread (stalled subscribers never read, so they do not count). `requested_*`:
    /// the command line's choice, 0 for automatic.
    ///
    /// Automatic gives each side one thread per core, so a bigger machine gets a bigger
    /// load generator, but never more threads than connections (an idle thread measures
    /// nothing). An explicit request is honoured up to the number of connections.
    pub fn decide(
        cores: usize,
        publishers: usize,
        readers: usize,
        requested_publisher_threads: usize,
        requested_subscriber_threads: usize,
    ) -> ThreadPlan {
        let pick = |requested: usize, connections: usize| {
            let wanted = if requested == 0 { cores.max(1) } else { requested };
            wanted.min(connections).max(1)
        };
        ThreadPlan {
            publisher_threads: pick(requested_publisher_threads, publishers),
            subscriber_threads: pick(requested_subscriber_threads, readers),
        }
    }
}

/// CPUs this process may run on (its affinity mask and cgroup quota included), 1 if unknown.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Splits `items` round-robin into `threads` lists (item `i` goes to list `i % threads`).
pub fn spread<T>(items: Vec<T>, threads: usize) -> Vec<Vec<T>> {
    let threads = threads.max(1);
    let mut lists: Vec<Vec<T>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        lists[i % threads].push(item);
    }
    lists.retain(|l| !l.is_empty());
    lists
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_scales_with_cores_up_to_the_connections() {
        // 1 publisher, 8 subscribers on 2, 16 and 64 cores.
        assert_eq!(
            ThreadPlan::decide(2, 1, 8, 0, 0),
            ThreadPlan { publisher_threads: 1, subscriber_threads: 2 }
        );
        assert_eq!(
            ThreadPlan::decide(16, 1, 8, 0, 0),
            ThreadPlan { publisher_threads: 1, subscriber_threads: 8 }
        );
        assert_eq!(
            ThreadPlan::decide(64, 32, 1000, 0, 0),
            ThreadPlan { publisher_threads: 32, subscriber_threads: 64 }
        );
    }

    #[test]
    fn explicit_requests_are_honoured_but_capped_by_connections() {
        assert_eq!(
            ThreadPlan::decide(2, 4, 8, 3, 5),
            ThreadPlan { publisher_threads: 3, subscriber_threads: 5 }
        );
        assert_eq!(
            ThreadPlan::decide(2, 1, 8, 4, 20),
            ThreadPlan { publisher_threads: 1, subscriber_threads: 8 }
        );
    }

    #[test]
    fn never_zero_threads() {
        // Every subscriber stalled (no readers), and a machine reporting no cores.
        assert_eq!(
            ThreadPlan::decide(0, 1, 0, 0, 0),
            ThreadPlan { publisher_threads: 1, subscriber_threads: 1 }
        );
    }

    #[test]
    fn spread_is_round_robin_without_empty_lists() {
        assert_eq!(spread(vec![0, 1, 2, 3, 4], 2), vec![vec![0, 2, 4], vec![1, 3]]);
        assert_eq!(spread(vec![7], 4), vec![vec![7]]);
        assert!(spread(Vec::<u8>::new(), 3).is_empty());
    }
}
