import Dispatch
import Foundation
import Logging
import PostgresNIO
import Realtime

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Runs external programs (as `account` through `runuser` when given), capturing their output.
///
/// Programs are spawned with `posix_spawn` rather than Foundation's `Process`: on Linux `Process` learns that a child exited
/// when a socket it hands to the child is closed, and the postmaster that `pg_ctl start` leaves behind inherits that socket, so
/// the start would only be reported once PostgreSQL stops. Here the child gets only standard input, output and error (every
/// other descriptor is closed), and its exit is observed with `waitpid`.
struct ProgramRunner: Sendable {
    /// What a program exited with and wrote.
    struct Result: Sendable {
        /// The exit status, or 128 + the signal number when a signal ended it.
        var status: Int32
        var standardOutput: String
        var standardError: String

        /// Standard error, or standard output when standard error is empty.
        var errorText: String {
            let error = standardError.trimmingCharacters(in: .whitespacesAndNewlines)
            return error.isEmpty ? standardOutput.trimmingCharacters(in: .whitespacesAndNewlines) : error
        }
    }

    var account: ServerAccount?

    static func findProgram(_ name: String, in directories: [String]) -> String? {
        directories.map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Runs the program and waits for it without blocking a thread (its exit is polled).
    func run(_ program: String, _ arguments: [String]) async throws -> Result {
        let child = try spawn(program, arguments)
        var delay = 0.002
        while true {
            if let status = try child.reap(blocking: false) { return child.result(status: status) }
            // Not Task.sleep: a cancelled task must still wait for its child rather than spin.
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                DispatchQueue.global().asyncAfter(deadline: .now() + delay) { continuation.resume() }
            }
            delay = min(delay * 2, 0.05)
        }
    }

    /// Runs the program and blocks the calling thread until it exits; for exit handlers.
    func runBlocking(_ program: String, _ arguments: [String]) throws -> Result {
        let child = try spawn(program, arguments)
        guard let status = try child.reap(blocking: true) else { preconditionFailure("waitpid returned without a status") }
        return child.result(status: status)
    }

    /// A spawned child and the (unlinked) files receiving its output.
    private final class Child {
        let pid: pid_t
        let program: String
        let output: Int32
        let error: Int32

        init(pid: pid_t, program: String, output: Int32, error: Int32) {
            self.pid = pid
            self.program = program
            self.output = output
            self.error = error
        }

        deinit {
            close(output)
            close(error)
        }

        /// The exit status once the child has exited; nil while it runs (only when not blocking).
        func reap(blocking: Bool) throws(EmbeddedPostgresError) -> Int32? {
            var status: Int32 = 0
            while true {
                let result = waitpid(pid, &status, blocking ? 0 : WNOHANG)
                if result == pid { break }
                if result == 0 { return nil }
                if errno == EINTR { continue }
                throw .launchFailed(program: program, reason: "waitpid: " + String(cString: strerror(errno)))
            }
            let signal = status & 0x7f
            return signal == 0 ? (status >> 8) & 0xff : 128 + signal
        }

        func result(status: Int32) -> Result {
            Result(status: status, standardOutput: Self.contents(of: output), standardError: Self.contents(of: error))
        }

        private static func contents(of fd: Int32) -> String {
            var data = [UInt8]()
            var buffer = [UInt8](repeating: 0, count: 4096)
            var offset: off_t = 0
            while data.count < 1 << 20 {
                let count = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, offset) }
                if count < 0, errno == EINTR { continue }
                guard count > 0 else { break }
                data.append(contentsOf: buffer[..<count])
                offset += off_t(count)
            }
            return String(decoding: data.suffix(16384), as: UTF8.self)
        }
    }

    private func spawn(_ program: String, _ arguments: [String]) throws(EmbeddedPostgresError) -> Child {
        let executable: String
        var argv: [String]
        if let account {
            if let runuser = Self.findProgram("runuser", in: ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]) {
                executable = runuser
                argv = [runuser, "-u", account.name, "--", program] + arguments
            } else if let setpriv = Self.findProgram("setpriv", in: ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]) {
                executable = setpriv
                argv = [setpriv, "--reuid=\(account.uid)", "--regid=\(account.gid)", "--init-groups", "--", program] + arguments
            } else {
                throw .noSystemUser(reason: "neither runuser nor setpriv was found to run \(program) as \(account.name)")
            }
        } else {
            executable = program
            argv = [program] + arguments
        }
        // Libpq and server variables from our environment must not redirect the programs to another cluster.
        let environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("PG") }.map { "\($0.key)=\($0.value)" }

        let output = try Self.makeOutputFile(for: program)
        let error: Int32
        do {
            error = try Self.makeOutputFile(for: program)
        } catch {
            close(output)
            throw error
        }
        var spawned = false
        defer {
            if !spawned {
                close(output)
                close(error)
            }
        }

        #if canImport(Darwin)
            var actions: posix_spawn_file_actions_t? = nil
            var attributes: posix_spawnattr_t? = nil
        #else
            var actions = posix_spawn_file_actions_t()
            var attributes = posix_spawnattr_t()
        #endif
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }

        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, output, 1)
        posix_spawn_file_actions_adddup2(&actions, error, 2)
        #if canImport(Darwin)
            posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_CLOEXEC_DEFAULT))
        #else
            if let closeFrom = SpawnExtensions.addCloseFrom {
                _ = closeFrom(&actions, 3)
            } else {
                for fd in Self.openDescriptors() where fd > 2 { posix_spawn_file_actions_addclose(&actions, fd) }
            }
            // A directory every user may enter: the unprivileged user may not be allowed into ours.
            if let addChdir = SpawnExtensions.addChdir { _ = addChdir(&actions, "/") }
        #endif

        let cArguments = argv.map { strdup($0) } + [nil]
        let cEnvironment = environment.map { strdup($0) } + [nil]
        defer {
            for pointer in cArguments { free(pointer) }
            for pointer in cEnvironment { free(pointer) }
        }
        var pid = pid_t()
        let status = posix_spawn(&pid, executable, &actions, &attributes, cArguments, cEnvironment)
        guard status == 0 else { throw .launchFailed(program: executable, reason: String(cString: strerror(status))) }
        spawned = true
        return Child(pid: pid, program: program, output: output, error: error)
    }

    /// An anonymous file (created and unlinked at once) for a child's output; files rather than pipes so nothing can block.
    private static func makeOutputFile(for program: String) throws(EmbeddedPostgresError) -> Int32 {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("realtime-\(UUID().uuidString)").path
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw .launchFailed(program: program, reason: "could not create \(path) for its output: " + String(cString: strerror(errno)))
        }
        unlink(path)
        return fd
    }

    private static func openDescriptors() -> [Int32] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).compactMap { Int32($0) }
    }
}

#if !canImport(Darwin)
    /// glibc's `posix_spawn` extensions, which Swift does not import; looked up at run time (glibc 2.29 and 2.34).
    private enum SpawnExtensions {
        typealias AddChdir = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, UnsafePointer<CChar>?) -> Int32
        typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32

        static let addChdir: AddChdir? = dlsym(dlopen(nil, RTLD_NOW), "posix_spawn_file_actions_addchdir_np").map {
            unsafeBitCast($0, to: AddChdir.self)
        }
        static let addCloseFrom: AddCloseFrom? = dlsym(dlopen(nil, RTLD_NOW), "posix_spawn_file_actions_addclosefrom_np").map {
            unsafeBitCast($0, to: AddCloseFrom.self)
        }
    }
#endif
