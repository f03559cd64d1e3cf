import Foundation
import Synchronization

/// The service level of this node over a rolling window (10 minutes, in 10-second slots), against the objectives of the
/// original design: p95 of the delay from commit to a frame written to a stream under 1000 ms, and abnormal disconnects
/// under 1 % of streams.
///
/// - **Delay** is measured for every change frame a live stream writes (not for the catch-up of a resumed stream, whose
///   events are old by design): from the commit's timestamp to the moment the frame was handed to the connection.
/// - **Client delay** is what devices report they saw (`POST /realtime/v1/slo/client-delay`), judged by the same objective.
/// - **Disconnects**: a stream the server ended because the client could not keep up (`slow_consumer`) or because the
///   node shut down is abnormal; one the client closed, or ended by policy (access revoked, token expired), is not. The
///   rate is abnormal ends over the streams open at some point in the window.
public final class SLOMonitor: Sendable {
    /// The objectives; the defaults are the original design's.
    public struct Objectives: Sendable, Equatable {
        /// p95 of the delay, in milliseconds, at or above which the objective is breached.
        public var delayP95Milliseconds = 1000.0
        /// The share of abnormal disconnects (0.01 = 1 %) at or above which the objective is breached.
        public var disconnectRate = 0.01

        public init(delayP95Milliseconds: Double = 1000, disconnectRate: Double = 0.01) {
            self.delayP95Milliseconds = delayP95Milliseconds
            self.disconnectRate = disconnectRate
        }
    }

    public static let windowSeconds = 600
    static let slotSeconds = 10
    static var slotCount: Int { windowSeconds / slotSeconds }

    public let objectives: Objectives
    private let state: Mutex<State>

    private struct Slot {
        var index: Int64 = .min
        var delay = DelayHistogram()
        var clientDelay = DelayHistogram()
        var ended = 0
        var abnormal = 0
    }

    private struct State {
        var slots = [Slot](repeating: Slot(), count: SLOMonitor.slotCount)
        var open = 0

        /// The slot of `index`, emptied first when it still holds an older one.
        mutating func slot(_ index: Int64, _ update: (inout Slot) -> Void) {
            let position = Int(index % Int64(slots.count))
            if slots[position].index != index { slots[position] = Slot(index: index) }
            update(&slots[position])
        }
    }

    public init(objectives: Objectives = Objectives()) {
        self.objectives = objectives
        self.state = Mutex(State())
    }

    private static func slotIndex(_ time: Date) -> Int64 { Int64((time.timeIntervalSince1970 / Double(slotSeconds)).rounded(.down)) }

    /// Frames of events committed at `commitTimes` (seconds since 1970) were just written to a stream.
    func recordWritten(commitTimes: [Double], at now: Date = Date()) {
        guard !commitTimes.isEmpty else { return }
        let nowSeconds = now.timeIntervalSince1970
        state.withLock { state in
            state.slot(Self.slotIndex(now)) { slot in
                for commit in commitTimes { slot.delay.record((nowSeconds - commit) * 1000) }
            }
        }
    }

    /// Delays a client reports it saw, in milliseconds.
    func recordClientDelays(_ milliseconds: [Double], at now: Date = Date()) {
        state.withLock { state in
            state.slot(Self.slotIndex(now)) { slot in
                for value in milliseconds { slot.clientDelay.record(value) }
            }
        }
    }

    func streamOpened() { state.withLock { $0.open += 1 } }

    func streamEnded(abnormally: Bool, at now: Date = Date()) {
        state.withLock { state in
            state.open -= 1
            state.slot(Self.slotIndex(now)) { slot in
                slot.ended += 1
                if abnormally { slot.abnormal += 1 }
            }
        }
    }

    /// The window ending now.
    public func report(at now: Date = Date()) -> SLOReport {
        let newest = Self.slotIndex(now)
        let oldest = newest - Int64(Self.slotCount) + 1
        var delay = DelayHistogram()
        var clientDelay = DelayHistogram()
        var ended = 0
        var abnormal = 0
        let open = state.withLock { state in
            for slot in state.slots where slot.index >= oldest && slot.index <= newest {
                delay.add(slot.delay)
                clientDelay.add(slot.clientDelay)
                ended += slot.ended
                abnormal += slot.abnormal
            }
            return state.open
        }
        return SLOReport(
            windowSeconds: Self.windowSeconds,
            delay: .init(delay, objective: objectives.delayP95Milliseconds),
            clientDelay: .init(clientDelay, objective: objectives.delayP95Milliseconds),
            disconnects: .init(streams: max(0, open) + ended, abnormal: abnormal, objective: objectives.disconnectRate)
        )
    }
}

/// Whether an objective holds over the window.
public enum SLOStatus: String, Sendable, Codable {
    case ok
    case breached
    /// Nothing was measured in the window.
    case noData = "no_data"
}

/// The service level over the window, as `GET /realtime/v1/slo` serves it.
public struct SLOReport: Sendable, Codable, Equatable {
    public struct Delay: Sendable, Codable, Equatable {
        public var samples: Int
        public var p50: Double?
        public var p95: Double?
        public var p99: Double?
        public var max: Double?
        public var objectiveP95: Double
        public var status: SLOStatus

        init(_ histogram: DelayHistogram, objective: Double) {
            samples = histogram.count
            p50 = histogram.percentile(0.5)
            p95 = histogram.percentile(0.95)
            p99 = histogram.percentile(0.99)
            max = histogram.count > 0 ? histogram.maximum : nil
            objectiveP95 = objective
            status = p95.map { $0 >= objective ? .breached : .ok } ?? .noData
        }

        enum CodingKeys: String, CodingKey {
            case samples, p50, p95, p99, max
            case objectiveP95 = "objective_p95"
            case status
        }

        /// The p50, p95 or p99.
        func value(at quantile: Double) -> Double? {
            switch quantile {
            case 0.5: p50
            case 0.95: p95
            case 0.99: p99
            default: nil
            }
        }

        /// Writes `null` for a percentile with no samples, rather than leaving the key out.
        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(samples, forKey: .samples)
            try container.encode(p50, forKey: .p50)
            try container.encode(p95, forKey: .p95)
            try container.encode(p99, forKey: .p99)
            try container.encode(max, forKey: .max)
            try container.encode(objectiveP95, forKey: .objectiveP95)
            try container.encode(status, forKey: .status)
        }
    }

    public struct Disconnects: Sendable, Codable, Equatable {
        /// Streams open at some point in the window: those open now and those that ended in it.
        public var streams: Int
        public var abnormal: Int
        public var rate: Double?
        public var objective: Double
        public var status: SLOStatus

        init(streams: Int, abnormal: Int, objective: Double) {
            self.streams = streams
            self.abnormal = abnormal
            rate = streams > 0 ? Double(abnormal) / Double(streams) : nil
            self.objective = objective
            status = rate.map { $0 >= objective ? .breached : .ok } ?? .noData
        }

        enum CodingKeys: String, CodingKey {
            case streams, abnormal, rate, objective, status
        }

        /// Writes `null` for the rate of a window without streams, rather than leaving the key out.
        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(streams, forKey: .streams)
            try container.encode(abnormal, forKey: .abnormal)
            try container.encode(rate, forKey: .rate)
            try container.encode(objective, forKey: .objective)
            try container.encode(status, forKey: .status)
        }
    }

    public var windowSeconds: Int
    public var delay: Delay
    public var clientDelay: Delay
    public var disconnects: Disconnects

    /// Breached when any objective is; ok otherwise (also when nothing was measured).
    public var status: SLOStatus {
        [delay.status, clientDelay.status, disconnects.status].contains(.breached) ? .breached : .ok
    }

    enum CodingKeys: String, CodingKey {
        case windowSeconds = "window_seconds"
        case status
        case delay = "delay_ms"
        case clientDelay = "client_delay_ms"
        case disconnects
    }

    public init(windowSeconds: Int, delay: Delay, clientDelay: Delay, disconnects: Disconnects) {
        self.windowSeconds = windowSeconds
        self.delay = delay
        self.clientDelay = clientDelay
        self.disconnects = disconnects
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        windowSeconds = try container.decode(Int.self, forKey: .windowSeconds)
        delay = try container.decode(Delay.self, forKey: .delay)
        clientDelay = try container.decode(Delay.self, forKey: .clientDelay)
        disconnects = try container.decode(Disconnects.self, forKey: .disconnects)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(windowSeconds, forKey: .windowSeconds)
        try container.encode(status, forKey: .status)
        try container.encode(delay, forKey: .delay)
        try container.encode(clientDelay, forKey: .clientDelay)
        try container.encode(disconnects, forKey: .disconnects)
    }
}
