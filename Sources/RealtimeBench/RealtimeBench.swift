import ArgumentParser

/// The load tool: realtime scenarios, the nchan peer and the PostgreSQL floor, each reported as a table and JSON.
@main
struct RealtimeBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "realtime-bench",
        abstract: "Load tool for the realtime server, with nginx + nchan as the peer and PostgreSQL's LISTEN as the floor.",
        subcommands: [RealtimeScenario.self, WriteScenario.self, NchanScenario.self, FloorScenario.self]
    )
}
