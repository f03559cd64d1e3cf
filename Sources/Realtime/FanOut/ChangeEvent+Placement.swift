import Foundation

extension ChangeEvent {
    /// This event as shown on a channel where it counts as `operation` (see ``Channel/placements(of:)``).
    ///
    /// Only a moving UPDATE changes:
    /// - as a DELETE (a channel it left) it is placed where the row was, with `record` `{}` as for any DELETE, and its
    ///   `oldRecord` is the whole row **as it was before the change** (``rowBeforeChange``): those the row leaves learn
    ///   nothing of where it went or of any value written with the move.
    /// - as an INSERT (a channel it entered) it is the new row with `oldRecord` `{}`.
    public func placed(as operation: Operation) -> ChangeEvent {
        guard operation != self.operation, self.operation == .update else { return self }
        var event = self
        event.operation = operation
        event.previousPlace = nil
        switch operation {
        case .delete:
            event.place = previousPlace ?? place
            event.record = "{}"
            event.oldRecord = rowBeforeChange
        case .insert:
            event.oldRecord = "{}"
        case .update, .truncate:
            break
        }
        return event
    }

    /// For an UPDATE, the whole row before it: the new row overlaid with the old values of the columns that changed
    /// (`oldRecord` holds exactly those, so every column is as it was). For other operations, the old record.
    var rowBeforeChange: String {
        guard operation == .update else { return oldRecord }
        guard let new = Self.object(record), let changed = Self.object(oldRecord) else { return oldRecord }
        return JSONValue.text(of: new.merging(changed) { _, old in old })
    }

    private static func object(_ text: String) -> [String: JSONValue]? {
        try? JSONDecoder().decode([String: JSONValue].self, from: Data(text.utf8))
    }

    /// The row that filters are evaluated against when the event is delivered as `operation`: the old row for a DELETE
    /// (for a move-out, the row as it was before the move), the new row otherwise.
    func filteredRow(deliveredAs operation: Operation) -> String {
        guard operation == .delete else { return record }
        return self.operation == .delete ? oldRecord : rowBeforeChange
    }
}
