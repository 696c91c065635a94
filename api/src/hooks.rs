//! Fault-injection annotations on a `ThinPool`, for the cluster tests. The
//! node honours them only when started with `--test-hooks true`, never in a
//! deployment.

/// `"<boundary>@<txn>"`: the node SIGKILLs itself when the commit of `txn`
/// reaches `boundary` (start, suspended, posted-N, txn-set, resumed), or,
/// for [`UNREPORTED`], once `txn` has ended (committed or aborted) and before
/// the status that reports it is written. Fires once per node boot.
pub const KILL_AT: &str = "test.thin.csi.io/kill-at";
/// Any value: once, move the kernel's transaction id behind the engine's
/// back (`set_transaction_id k k+5`), as a stray dmsetup would.
pub const TAMPER: &str = "test.thin.csi.io/tamper-transaction-id";
/// A thin id: once per id and boot, the node posts `delete <id>` to the pool
/// behind the engine's back (as `dmsetup message` would), to test the leak
/// collector's report of objects whose device is gone.
pub const DELETE_BEHIND: &str = "test.thin.csi.io/delete-device-behind";
/// Any value: the node stops serving the pool and exits 0.
pub const STOP: &str = "test.thin.csi.io/stop";
/// The [`KILL_AT`] boundary after the kernel work and before the status write.
pub const UNREPORTED: &str = "unreported";
/// [`KILL_AT`] on a `ThinVolume` with this value: NodeExpandVolume of that
/// volume SIGKILLs the node once its thin device has grown and before its
/// filesystem does. Fires once per node boot and volume.
pub const EXPAND_RESIZED: &str = "expand-resized";
