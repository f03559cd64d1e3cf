/// Splits a SQL script into statements at top-level semicolons.
///
/// It understands what can hide a semicolon: single-quoted strings (with `''` and E'…' escapes), double-quoted
/// identifiers, dollar-quoted bodies (`$$ … $$`, `$tag$ … $tag$`), `--` line comments and nested `/* */` comments.
/// PostgresNIO speaks only the extended protocol, which takes one statement at a time.
public enum SQLScript {
    public static func statements(in script: String) -> [String] {
        let chars = Array(script.unicodeScalars)
        var statements: [String] = []
        var current = String.UnicodeScalarView()
        var index = 0

        func flush() {
            let statement = String(current).trimmingWhitespace()
            if !statement.isEmpty && !statement.isOnlyComments { statements.append(statement) }
            current = String.UnicodeScalarView()
        }

        while index < chars.count {
            let char = chars[index]
            let next: Unicode.Scalar? = index + 1 < chars.count ? chars[index + 1] : nil
            switch char {
            case "'":
                let escapes = index > 0 && (chars[index - 1] == "E" || chars[index - 1] == "e")
                let end = scanQuoted(chars, from: index, quote: "'", backslashEscapes: escapes)
                current.append(contentsOf: chars[index..<end])
                index = end
            case "\"":
                let end = scanQuoted(chars, from: index, quote: "\"", backslashEscapes: false)
                current.append(contentsOf: chars[index..<end])
                index = end
            case "-" where next == "-":
                var end = index
                while end < chars.count && chars[end] != "\n" { end += 1 }
                current.append(contentsOf: chars[index..<end])
                index = end
            case "/" where next == "*":
                var depth = 0
                var end = index
                repeat {
                    if end + 1 < chars.count && chars[end] == "/" && chars[end + 1] == "*" {
                        depth += 1
                        end += 2
                    } else if end + 1 < chars.count && chars[end] == "*" && chars[end + 1] == "/" {
                        depth -= 1
                        end += 2
                    } else {
                        end += 1
                    }
                } while depth > 0 && end < chars.count
                current.append(contentsOf: chars[index..<end])
                index = end
            case "$":
                if let tagEnd = dollarTagEnd(chars, from: index) {
                    let tag = Array(chars[index...tagEnd])
                    var end = tagEnd + 1
                    while end < chars.count && !(chars[end] == "$" && Array(chars[end..<min(end + tag.count, chars.count)]) == tag) {
                        end += 1
                    }
                    end = min(end + tag.count, chars.count)
                    current.append(contentsOf: chars[index..<end])
                    index = end
                } else {
                    current.append(char)
                    index += 1
                }
            case ";":
                flush()
                index += 1
            default:
                current.append(char)
                index += 1
            }
        }
        flush()
        return statements
    }

    /// The index after the closing quote (or the end of input when unterminated).
    private static func scanQuoted(_ chars: [Unicode.Scalar], from start: Int, quote: Unicode.Scalar, backslashEscapes: Bool) -> Int {
        var index = start + 1
        while index < chars.count {
            if backslashEscapes && chars[index] == "\\" {
                index += 2
                continue
            }
            if chars[index] == quote {
                if index + 1 < chars.count && chars[index + 1] == quote {
                    index += 2
                    continue
                }
                return index + 1
            }
            index += 1
        }
        return chars.count
    }

    /// For a `$` that opens a dollar quote (`$$` or `$tag$`), the index of the tag's closing `$`.
    private static func dollarTagEnd(_ chars: [Unicode.Scalar], from start: Int) -> Int? {
        if start > 0, chars[start - 1].properties.isAlphabetic || chars[start - 1] == "_" || chars[start - 1].properties.numericType != nil {
            return nil  // part of an identifier such as a$b
        }
        var index = start + 1
        while index < chars.count {
            let char = chars[index]
            if char == "$" { return index }
            let isTagChar = char.properties.isAlphabetic || char == "_" || (index > start + 1 && char.properties.numericType != nil)
            if !isTagChar { return nil }
            index += 1
        }
        return nil
    }
}

extension String {
    fileprivate func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }),
            let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })
        else { return "" }
        return String(scalars[first...last])
    }

    /// True when every line is empty or a `--` comment.
    fileprivate var isOnlyComments: Bool {
        split(separator: "\n").allSatisfy { line in
            let trimmed = String(line).trimmingWhitespace()
            return trimmed.isEmpty || trimmed.hasPrefix("--")
        }
    }
}
