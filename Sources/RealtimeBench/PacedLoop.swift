/// Runs jobs at a steady rate for a while — open loop: the schedule does not wait for answers, except that no more
/// than `maxInFlight` jobs run at once (then the achieved rate falls below the asked one, which the report shows).
/// No job starts after `duration`; the loop then waits for the jobs still running.
struct PacedLoop: Sendable {
    var rate: Double
    var duration: Duration
    var maxInFlight: Int

    /// Calls `job` with 0, 1, 2, … at `rate` per second until `duration` has passed, then waits for the last ones.
    ///
    /// Finished jobs are discarded at once (a discarding task group), so a long soak keeps no memory per job.
    func run(_ job: @escaping @Sendable (Int) async -> Void) async {
        let inFlight = Counter()
        let clock = ContinuousClock()
        let start = clock.now
        let end = start + duration
        await withDiscardingTaskGroup { group in
            var number = 0
            while true {
                let due = start + .seconds(Double(number) / rate)
                // The schedule ends at `end`, and so does the loop when the cap held it back: it stops on time.
                guard due < end, clock.now < end else { break }
                if due > clock.now { try? await Task.sleep(until: due, clock: clock) }
                while inFlight.value >= maxInFlight, clock.now < end { try? await Task.sleep(for: .microseconds(500)) }
                let current = number
                inFlight.add(1)
                group.addTask {
                    await job(current)
                    inFlight.add(-1)
                }
                number += 1
            }
        }
    }
}
