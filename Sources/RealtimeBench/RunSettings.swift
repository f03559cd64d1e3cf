import ArgumentParser
import Foundation
import NIOPosix

/// The options every load scenario shares.
struct LoadOptions: ParsableArguments {
    @Option(help: "A name for the report, e.g. S1.")
    var name = "run"

    @Option(help: "Base URL of the server (loopback only).")
    var url = "http://127.0.0.1:8080"

    @Option(help: "SSE subscribers to open.")
    var subscribers = 1000

    @Option(help: "Channels (plans, or nchan channels) the subscribers are spread over.")
    var channels = 100

    @Option(help: "Writes (or publishes) per second.")
    var rate: Double = 100

    @Option(help: "Seconds of writing.")
    var duration: Double = 30

    @Option(help: "Subscribers connecting at once.")
    var connectConcurrency = 200

    @Option(help: "Most writes in flight at once; beyond it the achieved rate falls.")
    var maxInFlight = 256

    @Option(help: "Most seconds to wait after the last write for the feed (realtime) or the frames (nchan) to catch up.")
    var drainSeconds: Double = 120

    /// One by default: the frames of one write reach many streams at once, and one loop then reads them all in one
    /// wake-up where two loops would each wake; on 2 cores shared with the server, a wake-up costs more than a frame.
    @Option(help: "Event-loop threads of the tool's subscribers.")
    var threads = 1

    @Option(help: "Pid of the server process (realtime, or nginx's master) whose memory and CPU to read.")
    var serverPid: Int32?

    @Option(help: "Pid of PostgreSQL's postmaster: its and its backends' CPU is reported as database CPU.")
    var databasePid: Int32?

    @Option(help: "The server's data dir: PostgreSQL's postmaster is found from its postgres/postmaster.pid (when no --database-pid).")
    var dataDir: String?

    @Option(help: "Where to write the JSON report.")
    var jsonOut: String?

    /// The URL's host and port, refused unless the host is on loopback.
    func loopbackEndpoint() throws -> (host: String, port: Int) {
        guard let components = URLComponents(string: url), let host = components.host else { throw BenchError("--url is not a URL: \(url)") }
        guard host == "localhost" || host == "::1" || host == "[::1]" || host.hasPrefix("127.") else {
            throw BenchError("The load tool sends traffic to loopback only; \(host) is not a loopback address.")
        }
        return (host, components.port ?? 80)
    }

    /// Prints progress to standard error, prefixed with the scenario's name.
    var log: @Sendable (String) -> Void {
        { [name] message in FileHandle.standardError.write(Data("[\(name)] \(message)\n".utf8)) }
    }

    func makeGroup() -> MultiThreadedEventLoopGroup {
        MultiThreadedEventLoopGroup(numberOfThreads: max(1, threads))
    }
}

/// The options of the scenarios that write tasks as editors (the realtime S scenarios and W).
struct WriteOptions: ParsableArguments {
    @Option(
        name: .customLong("editors-per-branch"),
        help: """
            Editors per branch who make the writes (each write on a plan carries the token of an editor of its branch). \
            By default enough that each writes at most 5 a second, well inside the server's per-user write limit \
            (20/s): at least 4, for S at its rate, 64 for W's closed loop.
            """
    )
    var editorsPerBranchAsked: Int?

    /// The editors per branch: as asked, or enough that each makes at most 5 writes a second at `rate` over `branches`.
    func editorsPerBranch(rate: Double, branches: Int) -> Int {
        editorsPerBranchAsked ?? max(4, Int((rate / Double(max(1, branches)) / 5).rounded(.up)))
    }

    @Option(help: "Write mix in percent, e.g. insert=30,update=30,status_change=25,delete=15.")
    var mix = "insert=30,update=30,status_change=25,delete=15"

    @Option(help: "Tasks made in every plan before the measurement.")
    var tasksPerPlan = 5

    @Option(help: "File with the server's JWT secret (the embedded server's <data-dir>/jwt-secret); REALTIME_JWT_SECRET wins.")
    var jwtSecretFile: String?
}

/// Resource readings before and after the measured window.
struct ResourceProbes: Sendable {
    let server: ProcessProbe?
    let database: ProcessProbe?
    let tool = ProcessProbe.current

    init(options: LoadOptions, serverHasChildren: Bool) {
        server = options.serverPid.map { ProcessProbe(pid: $0, includesChildren: serverHasChildren) }
        database =
            options.databasePid.map { ProcessProbe(pid: $0, includesChildren: true) }
            ?? options.dataDir.flatMap { ProcessProbe.postmaster(dataDir: $0) }
    }
}

extension Duration {
    /// The duration in seconds.
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}

/// The time the report was started, ISO-8601 in UTC.
func timestampNow() -> String {
    ISO8601DateFormatter().string(from: Date())
}
