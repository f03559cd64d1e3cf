import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Memory and CPU time of a process — or of a process and its children, e.g. PostgreSQL's postmaster and backends or
/// nginx's master and workers — read from `/proc`.
struct ProcessProbe: Sendable {
    /// The process watched.
    let pid: Int32
    /// Whether its direct children count too.
    let includesChildren: Bool

    /// The load tool itself.
    static let current = ProcessProbe(pid: getpid(), includesChildren: false)

    /// CPU seconds (user + system) used so far; nil when the process is gone. With children, the CPU of children that
    /// have ended (a PostgreSQL backend whose connection closed) counts too: the parent's `cutime` and `cstime`.
    func cpuSeconds() -> Double? {
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        var total: Double?
        for pid in pids() {
            guard let stat = Self.stat(of: pid) else { continue }
            let reaped = pid == self.pid && includesChildren ? stat.cutime + stat.cstime : 0
            total = (total ?? 0) + Double(stat.utime + stat.stime + reaped) / ticks
        }
        return total
    }

    /// PostgreSQL's postmaster for a data dir: the first line of `<dir>/postmaster.pid` (the embedded server keeps its
    /// cluster in `<data-dir>/postgres`, which is tried too). With ``includesChildren``, its backends count as well.
    static func postmaster(dataDir: String) -> ProcessProbe? {
        for path in ["\(dataDir)/postgres/postmaster.pid", "\(dataDir)/postmaster.pid"] {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8),
                let pid = Int32(text.split(separator: "\n").first?.trimmingCharacters(in: .whitespaces) ?? "")
            else { continue }
            return ProcessProbe(pid: pid, includesChildren: true)
        }
        return nil
    }

    /// Resident memory in bytes (VmRSS); nil when the process is gone.
    func residentBytes() -> Int? {
        var total: Int?
        for pid in pids() {
            guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
                let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
                let kilobytes = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
            else { continue }
            total = (total ?? 0) + kilobytes * 1024
        }
        return total
    }

    /// The process, and its direct children when asked.
    private func pids() -> [Int32] {
        guard includesChildren else { return [pid] }
        var found = [pid]
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        for entry in entries {
            guard let candidate = Int32(entry), candidate != pid, let stat = Self.stat(of: candidate), stat.parent == pid else { continue }
            found.append(candidate)
        }
        return found
    }

    /// The fields of `/proc/<pid>/stat` used here.
    private struct Stat {
        var parent: Int32
        var utime: Int64
        var stime: Int64
        var cutime: Int64
        var cstime: Int64
    }

    private static func stat(of pid: Int32) -> Stat? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = text.lastIndex(of: ")")
        else { return nil }
        // After the command name in parentheses: state, ppid, ... utime is field 14 and stime 15 of the whole line.
        let fields = text[text.index(after: close)...].split(separator: " ", omittingEmptySubsequences: true)
        guard fields.count > 14, let parent = Int32(fields[1]), let utime = Int64(fields[11]), let stime = Int64(fields[12]),
            let cutime = Int64(fields[13]), let cstime = Int64(fields[14])
        else {
            return nil
        }
        return Stat(parent: parent, utime: utime, stime: stime, cutime: cutime, cstime: cstime)
    }
}

/// CPU seconds and resident memory of a probe between two moments.
struct ResourceWindow: Sendable {
    private let probe: ProcessProbe?
    private let startCPU: Double?

    init(_ probe: ProcessProbe?) {
        self.probe = probe
        self.startCPU = probe?.cpuSeconds()
    }

    /// CPU seconds used since the window opened; nil without a probe.
    func cpuSeconds() -> Double? {
        guard let startCPU, let now = probe?.cpuSeconds() else { return nil }
        return now - startCPU
    }
}
