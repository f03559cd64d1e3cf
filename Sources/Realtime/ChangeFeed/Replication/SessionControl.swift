import CLibPQ
import Foundation
import Logging
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// The stop and status-update requests for one session's thread, with a pipe that wakes its `poll`.
final class SessionControl: Sendable {
    private struct Flags {
        var stop = false
        var statusUpdate = false
        /// The weight (``WALTransaction/weight``) of what was handed to the consumer and not yet released by it.
        var inFlight = 0
    }

    private let flags = Mutex(Flags())
    /// The pipe's ends: the session polls `wakeReader`; `requestStop()` and `requestStatusUpdate()` write to `wakeWriter`.
    let wakeReader: Int32
    private let wakeWriter: Int32

    init() throws(ReplicationError) {
        var descriptors: [Int32] = [-1, -1]
        guard pipe(&descriptors) == 0 else { throw ReplicationError("could not create a pipe: " + String(cString: strerror(errno))) }
        for descriptor in descriptors {
            _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
            _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
        }
        wakeReader = descriptors[0]
        wakeWriter = descriptors[1]
    }

    deinit {
        close(wakeReader)
        close(wakeWriter)
    }

    func requestStop() {
        flags.withLock { $0.stop = true }
        wake()
    }

    func requestStatusUpdate() {
        flags.withLock { $0.statusUpdate = true }
        wake()
    }

    var isStopRequested: Bool { flags.withLock { $0.stop } }

    /// The session handed the consumer a transaction or piece of this weight.
    func delivered(_ weight: Int) { flags.withLock { $0.inFlight += weight } }

    /// The consumer is done with transactions or pieces of this total weight: room for as much more.
    func released(_ weight: Int) {
        flags.withLock { $0.inFlight = max(0, $0.inFlight - weight) }
        wake()
    }

    /// Whether the consumer holds a weight of `limit` or more (nil: no limit).
    func isFull(limit: Int?) -> Bool {
        guard let limit else { return false }
        return flags.withLock { $0.inFlight >= limit }
    }

    /// The requests made since the last call: whether to stop, whether to send a status update now.
    func takeRequests() -> (stop: Bool, statusUpdate: Bool) {
        flags.withLock { flags in
            defer { flags.statusUpdate = false }
            return (flags.stop, flags.statusUpdate)
        }
    }

    /// Empties the pipe after `poll` reported it readable.
    func drain() {
        var buffer = [UInt8](repeating: 0, count: 64)
        while buffer.withUnsafeMutableBytes({ read(wakeReader, $0.baseAddress, $0.count) }) > 0 {}
    }

    private func wake() {
        var byte: UInt8 = 1
        _ = write(wakeWriter, &byte, 1)  // A full pipe (EAGAIN) already wakes the reader.
    }
}
