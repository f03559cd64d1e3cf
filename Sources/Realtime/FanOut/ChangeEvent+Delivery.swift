import Foundation

extension ChangeEvent {
    /// This event as shown on a channel where it counts as `operation` (see ``Channel/deliveries(of:)``).
    ///
    /// Only a moving UPDATE changes:
    /// - as a DELETE (a channel it left) it is placed where the row was, with `record` `{}`. Its `oldRecord` is the
    ///   row's *new* full record: the event carries only the changed columns of the old row, so the row as it was when it
    ///   left is given with its new values (and new branch or plan). Readers that need the old values of the moved
    ///   columns get them from the UPDATE on the channels the row moved to.
    /// - as an INSERT (a channel it entered) it is the new row with `oldRecord` `{}`.
    public func delivered(as operation: Operation) -> ChangeEvent {
        guard operation != self.operation, self.operation == .update else { return self }
        var event = self
        event.operation = operation
        event.oldBranchID = nil
        event.oldPlanID = nil
        switch operation {
        case .delete:
            event.branchID = oldBranchID ?? branchID
            event.planID = oldPlanID ?? planID
            event.record = "{}"
            event.oldRecord = record
        case .insert:
            event.oldRecord = "{}"
        case .update:
            break
        }
        return event
    }

    /// The row that filters are evaluated against when the event is delivered as `operation`: the old row for a DELETE
    /// (for a move-out, the row's record, see ``delivered(as:)``), the new row otherwise.
    func filteredRow(deliveredAs operation: Operation) -> String {
        operation == .delete && self.operation == .delete ? oldRecord : record
    }
}
