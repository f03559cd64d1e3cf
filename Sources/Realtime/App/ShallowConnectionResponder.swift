import Hummingbird

/// Answers each request in a child task of the connection's task, so that the connection's task keeps a shallow stack.
///
/// Swift keeps the deepest stack a task ever reached allocated until the task ends (its allocator reuses slabs but
/// never returns them), and Hummingbird serves a connection from one task for the connection's whole life. Routing,
/// authentication and the database reads of a request would otherwise leave ~20 KiB on every connection, which an
/// idle event stream holds for hours. The child task's stack goes when it returns its response.
struct ShallowConnectionResponder<Inner: HTTPResponder>: HTTPResponder where Inner.Context: Sendable {
    typealias Context = Inner.Context

    let inner: Inner

    func respond(to request: Request, context: Context) async throws -> Response {
        async let response = inner.respond(to: request, context: context)
        return try await response
    }
}
