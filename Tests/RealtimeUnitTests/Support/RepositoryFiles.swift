import Foundation

/// Files the unit tests read or write: the repository's own (e.g. the migrations) and throwaway directories.
enum RepositoryFiles {
    /// The repository's root folder.
    static var root: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path
    }

    /// A new empty directory under the system's temporary folder.
    static func scratchDirectory() -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("realtime-unit-\(UUID().uuidString)").path
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }
}
