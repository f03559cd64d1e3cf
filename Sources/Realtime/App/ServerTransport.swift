import Hummingbird
import HummingbirdCore
import HummingbirdHTTP2
import NIOSSL

/// How the server speaks to clients: plain HTTP/1.1, or with a certificate HTTPS offering HTTP/2 and HTTP/1.1 by ALPN,
/// so that a browser carries all its streams and requests on one connection.
enum ServerTransport {
    /// The server builder for the configuration: every connection (every HTTP/2 stream) counted against `limits`, and
    /// closed when idle for `idleTimeoutSeconds` — which also bounds how long a request's head may take to arrive, so a
    /// client that sends its headers a byte at a time is cut off.
    ///
    /// - Throws: `ConfigurationError` when only one of certificate and key is given, or either cannot be read.
    static func builder(for configuration: Configuration, limits: ConnectionLimits) throws -> HTTPServerBuilder {
        let idleTimeout = Duration.seconds(configuration.idleTimeoutSeconds)
        let http1 = HTTP1Channel.Configuration(
            additionalChannelHandlers: [limits.handler(), StreamSocketHandler()],
            idleTimeout: .seconds(Int64(configuration.idleTimeoutSeconds))
        )
        switch (configuration.tlsCertificatePath, configuration.tlsKeyPath) {
        case (nil, nil):
            return .http1(configuration: http1)
        case (let certificatePath?, let keyPath?):
            let chain: [NIOSSLCertificate]
            let key: NIOSSLPrivateKey
            do {
                chain = try NIOSSLCertificate.fromPEMFile(certificatePath)
            } catch {
                throw ConfigurationError("Cannot read the TLS certificate chain from \(certificatePath): \(error).")
            }
            guard !chain.isEmpty else { throw ConfigurationError("\(certificatePath) holds no PEM certificate.") }
            do {
                key = try NIOSSLPrivateKey(file: keyPath, format: .pem)
            } catch {
                throw ConfigurationError("Cannot read the TLS private key from \(keyPath): \(error).")
            }
            let tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
            return try .http2Upgrade(tlsConfiguration: tls, configuration: .init(idleTimeout: idleTimeout, streamConfiguration: http1))
        default:
            throw ConfigurationError("--tls-cert and --tls-key go together: give both, or neither for plain HTTP.")
        }
    }
}
