import NIOCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The load tool's own CPU: the whole process (`getrusage`), and the event-loop threads that receive the frames alone
/// (each thread's CPU clock, read on that thread), so that the cost per frame received is known apart from the writes.
struct ToolCPU: Sendable {
    /// The receiving event loops (none in W, which receives no frames).
    let receivers: (any EventLoopGroup)?

    /// A reading at one moment.
    struct Reading: Sendable {
        var process: Double
        var receivers: Double
    }

    /// User + system CPU seconds of this process so far.
    static func processSeconds() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        func seconds(_ time: timeval) -> Double { Double(time.tv_sec) + Double(time.tv_usec) / 1e6 }
        return seconds(usage.ru_utime) + seconds(usage.ru_stime)
    }

    /// Reads both now.
    func read() async -> Reading {
        var receiving = 0.0
        for loop in receivers?.makeIterator() ?? EventLoopIterator([]) {
            receiving += (try? await loop.submit { Self.threadSeconds() }.get()) ?? 0
        }
        return Reading(process: Self.processSeconds(), receivers: receiving)
    }

    /// CPU seconds of the calling thread.
    private static func threadSeconds() -> Double {
        var spec = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &spec)
        return Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9
    }
}
