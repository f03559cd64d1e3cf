/// Counts of delays in milliseconds, in fixed buckets: 1 ms wide below 100 ms, 10 ms below 1 s, 100 ms below 10 s and
/// 1 s below 2 minutes; longer delays share one last bucket. A percentile is reported as its bucket's upper bound (never
/// more than the largest delay recorded), so it is at most one bucket width above the true value.
struct DelayHistogram: Sendable, Equatable {
    private(set) var counts = [UInt32](repeating: 0, count: Self.bucketCount)
    private(set) var count = 0
    private(set) var maximum = 0.0

    static let bucketCount = 391

    mutating func record(_ milliseconds: Double) {
        let value = milliseconds.isFinite ? max(0, milliseconds) : 0
        counts[Self.bucket(of: value)] &+= 1
        count += 1
        maximum = max(maximum, value)
    }

    mutating func add(_ other: DelayHistogram) {
        guard other.count > 0 else { return }
        for index in counts.indices { counts[index] &+= other.counts[index] }
        count += other.count
        maximum = max(maximum, other.maximum)
    }

    /// The delay that `quantile` (0...1) of the recorded delays do not exceed; nil when nothing was recorded.
    func percentile(_ quantile: Double) -> Double? {
        guard count > 0 else { return nil }
        let rank = max(1, Int((quantile * Double(count)).rounded(.up)))
        var seen = 0
        for (index, bucketCount) in counts.enumerated() {
            seen += Int(bucketCount)
            if seen >= rank { return min(Self.upperBound(of: index), maximum) }
        }
        return maximum
    }

    static func bucket(of milliseconds: Double) -> Int {
        switch milliseconds {
        case ..<100: Int(milliseconds)
        case ..<1000: 100 + Int((milliseconds - 100) / 10)
        case ..<10_000: 190 + Int((milliseconds - 1000) / 100)
        case ..<120_000: 280 + Int((milliseconds - 10_000) / 1000)
        default: bucketCount - 1
        }
    }

    static func upperBound(of bucket: Int) -> Double {
        switch bucket {
        case ..<100: Double(bucket + 1)
        case ..<190: 100 + Double(bucket - 99) * 10
        case ..<280: 1000 + Double(bucket - 189) * 100
        case ..<390: 10_000 + Double(bucket - 279) * 1000
        default: .infinity
        }
    }
}
