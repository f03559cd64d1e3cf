import NIOCore

/// Requests sent on one event loop by a ``LoopHTTPClient``, paced, for a while: at a steady rate, open loop (no request
/// waits for an answer, except that at most `maxInFlight` are unanswered; then the achieved rate falls below the asked
/// one, which the report shows), or closed loop (each of `senders` sends its next request when its last one is
/// answered). No request starts after `duration`; the run ends when the last one is answered.
struct LoopRequestRun: Sendable {
    enum Pace: Sendable {
        case rate(Double, maxInFlight: Int)
        case closedLoop(senders: Int)
    }

    /// What to send as request `number` (called on the loop just before it is sent), and what to do with its answer's
    /// status (nil: no answer).
    typealias Job = @Sendable (_ number: Int) -> (request: LoopRequest, answered: (_ status: Int?) -> Void)

    var loop: any EventLoop
    var host: String
    var port: Int
    var pace: Pace
    var duration: Duration
    /// Connections opened before the first request, as a busy client already has them.
    var warm: Int

    func run(_ job: @escaping Job) async throws {
        let connections: Int
        switch pace {
        case .rate(_, let maxInFlight): connections = maxInFlight
        case .closedLoop(let senders): connections = senders
        }
        try await loop.flatSubmit { [self] in
            let client = LoopHTTPClient(loop: loop, host: host, port: port, maxConnections: connections)
            let schedule = RequestSchedule(client: client, job: job)
            return client.warm(min(warm, connections)).assumeIsolated()
                .flatMap { schedule.start(pace, duration: duration) }
                .always { _ in client.close() }
                .nonisolated()
        }.get()
    }
}

/// The state of one ``LoopRequestRun``; it lives on its client's loop.
private final class RequestSchedule {
    private let client: LoopHTTPClient
    private let job: LoopRequestRun.Job
    private let done: EventLoopPromise<Void>
    private var next = 0
    private var inFlight = 0
    private var ended = false
    private var finished = false
    private var end = NIODeadline.now()

    /// The open loop's schedule: request `n` is due at `start + n × interval`.
    private var start = NIODeadline.now()
    private var interval = TimeAmount.zero
    private var maxInFlight = 1
    private var tick: Scheduled<Void>?

    init(client: LoopHTTPClient, job: @escaping LoopRequestRun.Job) {
        self.client = client
        self.job = job
        self.done = client.loop.makePromise()
    }

    func start(_ pace: LoopRequestRun.Pace, duration: Duration) -> EventLoopFuture<Void> {
        start = .now()
        end = start + TimeAmount(duration)
        switch pace {
        case .rate(let rate, let maxInFlight):
            interval = .nanoseconds(Int64(1e9 / rate))
            self.maxInFlight = max(1, maxInFlight)
            sendDue()
        case .closedLoop(let senders):
            for _ in 0..<senders { sendClosedLoop() }
            finishIfDone()
        }
        return done.futureResult
    }

    /// Sends every request that is due while there is room; then waits for the next one's time, or for room.
    private func sendDue() {
        tick = nil
        let now = NIODeadline.now()
        while inFlight < maxInFlight {
            let due = start + interval * Int64(next)
            guard due < end, now < end else {
                ended = true
                finishIfDone()
                return
            }
            guard due <= now else {
                tick = client.loop.assumeIsolated().scheduleTask(deadline: due) { self.sendDue() }
                return
            }
            send { self.roomFreed() }
        }
    }

    private func roomFreed() {
        if ended {
            finishIfDone()
        } else if tick == nil {
            sendDue()  // it was waiting for room
        }
    }

    private func sendClosedLoop() {
        guard NIODeadline.now() < end else {
            ended = true
            finishIfDone()
            return
        }
        send { self.sendClosedLoop() }
    }

    private func send(then onAnswer: @escaping () -> Void) {
        let (request, answered) = job(self.next)
        self.next += 1
        inFlight += 1
        client.send(request) { status in
            answered(status)
            self.inFlight -= 1
            onAnswer()
        }
    }

    private func finishIfDone() {
        guard ended, inFlight == 0, !finished else { return }
        finished = true
        done.succeed(())
    }
}
