//! Storage-fault injection for the embedded store: an SQLite VFS that wraps the default one
//! and, following a shared [`FaultPlan`], fails writes as a full disk, fails fsyncs, tears
//! writes in half or slows them down.
//!
//! It is a test and drill tool: a store uses it only when [`super::SqliteConfig::faults`] is
//! set (`ficus serve --fault-injection`), and the plan starts with no fault. Every method of
//! the wrapped VFS and of its files is forwarded; only `xWrite` and `xSync` consult the plan.
//! The WAL fdatasync the syncer thread issues outside SQLite (see `writer.rs`) consults the
//! same plan through [`FaultPlan::before_sync`], so "fsync fails" means every fsync of the
//! event log fails, whoever issues it.
//!
//! All the unsafe code of the store is in this module. Each VFS registered here lives for
//! the rest of the process (SQLite keeps a pointer to it in its global list), so it is
//! leaked on purpose: one small allocation per store opened with fault injection.

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::ffi;

/// Longest delay a slow-disk fault may add to one write or fsync, in milliseconds.
pub const MAX_FAULT_DELAY_MS: u64 = 10_000;

/// One kind of storage fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFault {
    /// Every write fails with `SQLITE_FULL`, as on a full disk.
    DiskFull,
    /// Every fsync fails with `SQLITE_IOERR_FSYNC` (and the syncer's fdatasync with EIO).
    FsyncError,
    /// Every write writes only its first half and then reports `SQLITE_IOERR_WRITE`.
    ShortWrite,
    /// Every write and fsync first sleeps `delay_ms` (capped at [`MAX_FAULT_DELAY_MS`]).
    SlowDisk { delay_ms: u64 },
}

impl StorageFault {
    /// The fault's name in the admin API and in logs.
    pub fn name(&self) -> &'static str {
        match self {
            StorageFault::DiskFull => "disk_full",
            StorageFault::FsyncError => "fsync_error",
            StorageFault::ShortWrite => "short_write",
            StorageFault::SlowDisk { .. } => "slow_disk",
        }
    }

    /// Parses a fault name (`delay_ms` is used by `slow_disk` only).
    pub fn parse(name: &str, delay_ms: u64) -> Option<Self> {
        Some(match name {
            "disk_full" => StorageFault::DiskFull,
            "fsync_error" => StorageFault::FsyncError,
            "short_write" => StorageFault::ShortWrite,
            "slow_disk" => StorageFault::SlowDisk {
                delay_ms: delay_ms.min(MAX_FAULT_DELAY_MS),
            },
            _ => return None,
        })
    }
}

const MODE_NONE: u8 = 0;
const MODE_DISK_FULL: u8 = 1;
const MODE_FSYNC: u8 = 2;
const MODE_SHORT_WRITE: u8 = 3;
const MODE_SLOW: u8 = 4;

/// The fault currently injected, switchable atomically from any thread while SQLite runs.
#[derive(Debug, Default)]
pub struct FaultPlan {
    mode: AtomicU8,
    delay_ms: AtomicU64,
    /// Writes and fsyncs failed (or slowed) on purpose so far.
    injected: AtomicU64,
}

impl FaultPlan {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Starts injecting `fault`, or stops injecting with `None`.
    pub fn set(&self, fault: Option<StorageFault>) {
        let mode = match fault {
            None => MODE_NONE,
            Some(StorageFault::DiskFull) => MODE_DISK_FULL,
            Some(StorageFault::FsyncError) => MODE_FSYNC,
            Some(StorageFault::ShortWrite) => MODE_SHORT_WRITE,
            Some(StorageFault::SlowDisk { delay_ms }) => {
                self.delay_ms
                    .store(delay_ms.min(MAX_FAULT_DELAY_MS), Ordering::Release);
                MODE_SLOW
            }
        };
        self.mode.store(mode, Ordering::Release);
        tracing::warn!(
            fault = fault.map(|f| f.name()),
            "storage fault plan changed"
        );
    }

    pub fn clear(&self) {
        self.set(None);
    }

    /// The fault being injected now.
    pub fn current(&self) -> Option<StorageFault> {
        match self.mode.load(Ordering::Acquire) {
            MODE_DISK_FULL => Some(StorageFault::DiskFull),
            MODE_FSYNC => Some(StorageFault::FsyncError),
            MODE_SHORT_WRITE => Some(StorageFault::ShortWrite),
            MODE_SLOW => Some(StorageFault::SlowDisk {
                delay_ms: self.delay_ms.load(Ordering::Acquire),
            }),
            _ => None,
        }
    }

    /// How many writes and fsyncs the plan has failed or slowed so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Acquire)
    }

    fn count(&self) {
        self.injected.fetch_add(1, Ordering::AcqRel);
    }

    /// Called before an fsync issued outside SQLite (the syncer's fdatasync of the WAL).
    pub fn before_sync(&self) -> std::io::Result<()> {
        match self.current() {
            Some(StorageFault::FsyncError) => {
                self.count();
                Err(std::io::Error::other("injected fsync error (EIO)"))
            }
            Some(StorageFault::SlowDisk { delay_ms }) => {
                self.count();
                std::thread::sleep(Duration::from_millis(delay_ms));
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// What a registered VFS points at: the plan and the VFS it wraps.
struct VfsContext {
    plan: Arc<FaultPlan>,
    real: *mut ffi::sqlite3_vfs,
}

/// A file opened through the faulty VFS. SQLite allocates `szOsFile` bytes for it; the real
/// VFS's file lives right after this header, at [`REAL_OFFSET`].
#[repr(C)]
struct FaultyFile {
    base: ffi::sqlite3_file,
    ctx: *const VfsContext,
    real: *mut ffi::sqlite3_file,
}

/// Offset of the real file inside our allocation, rounded up to 8 bytes for its alignment.
const REAL_OFFSET: usize = std::mem::size_of::<FaultyFile>().div_ceil(8) * 8;

/// Registers a new fault-injecting VFS wrapping the default one, driven by `plan`, and
/// returns its name (unique in the process) for `Connection::open_with_flags_and_vfs`.
pub fn register(plan: Arc<FaultPlan>) -> Result<String, String> {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let name = format!("ficus-faulty-{}", NEXT_ID.fetch_add(1, Ordering::AcqRel));
    // SAFETY: sqlite3_vfs_find with a null name returns the default VFS (initializing SQLite
    // first); it is a static structure that lives as long as the process.
    let real = unsafe { ffi::sqlite3_vfs_find(std::ptr::null()) };
    if real.is_null() {
        return Err("SQLite has no default VFS".into());
    }
    // SAFETY: `real` is non-null and points to SQLite's default VFS, which we only read.
    let real_vfs = unsafe { &*real };
    let z_name = CString::new(name.clone())
        .map_err(|e| e.to_string())?
        .into_raw();
    let ctx = Box::into_raw(Box::new(VfsContext { plan, real }));
    let vfs = ffi::sqlite3_vfs {
        // We implement every method of versions 1 to 3, forwarding the optional ones only
        // when the real VFS has them.
        iVersion: real_vfs.iVersion.min(3),
        szOsFile: (REAL_OFFSET as c_int) + real_vfs.szOsFile,
        mxPathname: real_vfs.mxPathname,
        pNext: std::ptr::null_mut(),
        zName: z_name,
        pAppData: ctx as *mut c_void,
        xOpen: Some(x_open),
        xDelete: Some(x_delete),
        xAccess: Some(x_access),
        xFullPathname: Some(x_full_pathname),
        xDlOpen: Some(x_dl_open),
        xDlError: Some(x_dl_error),
        xDlSym: Some(x_dl_sym),
        xDlClose: Some(x_dl_close),
        xRandomness: Some(x_randomness),
        xSleep: Some(x_sleep),
        xCurrentTime: Some(x_current_time),
        xGetLastError: Some(x_get_last_error),
        xCurrentTimeInt64: Some(x_current_time_int64),
        xSetSystemCall: Some(x_set_system_call),
        xGetSystemCall: Some(x_get_system_call),
        xNextSystemCall: Some(x_next_system_call),
    };
    let vfs = Box::into_raw(Box::new(vfs));
    // SAFETY: `vfs` is a fully initialized, leaked (so never freed) sqlite3_vfs whose name
    // and app data are leaked too; SQLite links it into its global list under its mutex.
    let rc = unsafe { ffi::sqlite3_vfs_register(vfs, 0) };
    if rc != ffi::SQLITE_OK {
        return Err(format!("sqlite3_vfs_register failed with code {rc}"));
    }
    Ok(name)
}

/// The context of a VFS registered by [`register`].
///
/// # Safety
/// `vfs` must be a VFS created by [`register`] (SQLite passes back the pointer we gave it).
unsafe fn context<'a>(vfs: *mut ffi::sqlite3_vfs) -> &'a VfsContext {
    &*((*vfs).pAppData as *const VfsContext)
}

/// The real VFS behind ours.
///
/// # Safety
/// As for [`context`].
unsafe fn real_vfs(vfs: *mut ffi::sqlite3_vfs) -> *mut ffi::sqlite3_vfs {
    context(vfs).real
}

unsafe extern "C" fn x_open(
    vfs: *mut ffi::sqlite3_vfs,
    z_name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: SQLite hands us `szOsFile` bytes at `file`, 8-aligned; the header is ours and
    // the real file is placed after it. The real xOpen initializes its own part.
    let ctx = (*vfs).pAppData as *const VfsContext;
    let real = (*ctx).real;
    let ours = file as *mut FaultyFile;
    let real_file = (file as *mut u8).add(REAL_OFFSET) as *mut ffi::sqlite3_file;
    (*ours).base.pMethods = std::ptr::null();
    (*ours).ctx = ctx;
    (*ours).real = real_file;
    let Some(open) = (*real).xOpen else {
        return ffi::SQLITE_ERROR;
    };
    let rc = open(real, z_name, real_file, flags, out_flags);
    // If the real open failed without methods, ours must be null too, or SQLite would call
    // our xClose on a file that was never opened.
    if !(*real_file).pMethods.is_null() {
        (*ours).base.pMethods = &IO_METHODS;
    }
    rc
}

unsafe extern "C" fn x_delete(
    vfs: *mut ffi::sqlite3_vfs,
    z_name: *const c_char,
    sync_dir: c_int,
) -> c_int {
    // SAFETY (this and every forwarding method below): `vfs` is ours (see `context`), its
    // real VFS is SQLite's default, and the arguments are SQLite's own, passed on unchanged.
    let real = real_vfs(vfs);
    match (*real).xDelete {
        Some(f) => f(real, z_name, sync_dir),
        None => ffi::SQLITE_IOERR_DELETE,
    }
}

unsafe extern "C" fn x_access(
    vfs: *mut ffi::sqlite3_vfs,
    z_name: *const c_char,
    flags: c_int,
    out: *mut c_int,
) -> c_int {
    let real = real_vfs(vfs);
    match (*real).xAccess {
        Some(f) => f(real, z_name, flags, out),
        None => ffi::SQLITE_IOERR_ACCESS,
    }
}

unsafe extern "C" fn x_full_pathname(
    vfs: *mut ffi::sqlite3_vfs,
    z_name: *const c_char,
    n_out: c_int,
    z_out: *mut c_char,
) -> c_int {
    let real = real_vfs(vfs);
    match (*real).xFullPathname {
        Some(f) => f(real, z_name, n_out, z_out),
        None => ffi::SQLITE_ERROR,
    }
}

unsafe extern "C" fn x_dl_open(vfs: *mut ffi::sqlite3_vfs, z: *const c_char) -> *mut c_void {
    let real = real_vfs(vfs);
    match (*real).xDlOpen {
        Some(f) => f(real, z),
        None => std::ptr::null_mut(),
    }
}

unsafe extern "C" fn x_dl_error(vfs: *mut ffi::sqlite3_vfs, n: c_int, z: *mut c_char) {
    let real = real_vfs(vfs);
    if let Some(f) = (*real).xDlError {
        f(real, n, z)
    }
}

type DlSym = Option<unsafe extern "C" fn(*mut ffi::sqlite3_vfs, *mut c_void, *const c_char)>;

unsafe extern "C" fn x_dl_sym(
    vfs: *mut ffi::sqlite3_vfs,
    handle: *mut c_void,
    z: *const c_char,
) -> DlSym {
    let real = real_vfs(vfs);
    match (*real).xDlSym {
        Some(f) => f(real, handle, z),
        None => None,
    }
}

unsafe extern "C" fn x_dl_close(vfs: *mut ffi::sqlite3_vfs, handle: *mut c_void) {
    let real = real_vfs(vfs);
    if let Some(f) = (*real).xDlClose {
        f(real, handle)
    }
}

unsafe extern "C" fn x_randomness(vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    let real = real_vfs(vfs);
    match (*real).xRandomness {
        Some(f) => f(real, n, out),
        None => 0,
    }
}

unsafe extern "C" fn x_sleep(vfs: *mut ffi::sqlite3_vfs, micros: c_int) -> c_int {
    let real = real_vfs(vfs);
    match (*real).xSleep {
        Some(f) => f(real, micros),
        None => 0,
    }
}

unsafe extern "C" fn x_current_time(vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    let real = real_vfs(vfs);
    match (*real).xCurrentTime {
        Some(f) => f(real, out),
        None => ffi::SQLITE_ERROR,
    }
}

unsafe extern "C" fn x_get_last_error(
    vfs: *mut ffi::sqlite3_vfs,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    let real = real_vfs(vfs);
    match (*real).xGetLastError {
        Some(f) => f(real, n, out),
        None => 0,
    }
}

unsafe extern "C" fn x_current_time_int64(
    vfs: *mut ffi::sqlite3_vfs,
    out: *mut ffi::sqlite3_int64,
) -> c_int {
    let real = real_vfs(vfs);
    match (*real).xCurrentTimeInt64 {
        Some(f) if (*real).iVersion >= 2 => f(real, out),
        _ => ffi::SQLITE_ERROR,
    }
}

unsafe extern "C" fn x_set_system_call(
    vfs: *mut ffi::sqlite3_vfs,
    z: *const c_char,
    p: ffi::sqlite3_syscall_ptr,
) -> c_int {
    let real = real_vfs(vfs);
    match (*real).xSetSystemCall {
        Some(f) if (*real).iVersion >= 3 => f(real, z, p),
        _ => ffi::SQLITE_NOTFOUND,
    }
}

unsafe extern "C" fn x_get_system_call(
    vfs: *mut ffi::sqlite3_vfs,
    z: *const c_char,
) -> ffi::sqlite3_syscall_ptr {
    let real = real_vfs(vfs);
    match (*real).xGetSystemCall {
        Some(f) if (*real).iVersion >= 3 => f(real, z),
        _ => None,
    }
}

unsafe extern "C" fn x_next_system_call(
    vfs: *mut ffi::sqlite3_vfs,
    z: *const c_char,
) -> *const c_char {
    let real = real_vfs(vfs);
    match (*real).xNextSystemCall {
        Some(f) if (*real).iVersion >= 3 => f(real, z),
        _ => std::ptr::null(),
    }
}

/// The methods of every file we open: each forwards to the real file's own methods.
static IO_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(f_close),
    xRead: Some(f_read),
    xWrite: Some(f_write),
    xTruncate: Some(f_truncate),
    xSync: Some(f_sync),
    xFileSize: Some(f_file_size),
    xLock: Some(f_lock),
    xUnlock: Some(f_unlock),
    xCheckReservedLock: Some(f_check_reserved_lock),
    xFileControl: Some(f_file_control),
    xSectorSize: Some(f_sector_size),
    xDeviceCharacteristics: Some(f_device_characteristics),
    xShmMap: Some(f_shm_map),
    xShmLock: Some(f_shm_lock),
    xShmBarrier: Some(f_shm_barrier),
    xShmUnmap: Some(f_shm_unmap),
    xFetch: Some(f_fetch),
    xUnfetch: Some(f_unfetch),
};

/// Our header and the real file behind it.
///
/// # Safety
/// `file` must be a file opened by [`x_open`] whose methods are [`IO_METHODS`] (SQLite only
/// calls these methods on such files).
unsafe fn parts<'a>(
    file: *mut ffi::sqlite3_file,
) -> (
    &'a FaultyFile,
    *mut ffi::sqlite3_file,
    &'a ffi::sqlite3_io_methods,
) {
    let ours = &*(file as *const FaultyFile);
    let real = ours.real;
    (ours, real, &*(*real).pMethods)
}

unsafe extern "C" fn f_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY (this and every file method below): see `parts`; the real file was opened by
    // the real VFS and its methods get exactly the arguments SQLite gave us.
    let (_, real, m) = parts(file);
    let rc = match m.xClose {
        Some(f) => f(real),
        None => ffi::SQLITE_OK,
    };
    (*file).pMethods = std::ptr::null();
    rc
}

unsafe extern "C" fn f_read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let (_, real, m) = parts(file);
    match m.xRead {
        Some(f) => f(real, buf, amount, offset),
        None => ffi::SQLITE_IOERR_READ,
    }
}

unsafe extern "C" fn f_write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let (ours, real, m) = parts(file);
    let Some(write) = m.xWrite else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let plan = &(*ours.ctx).plan;
    match plan.current() {
        Some(StorageFault::DiskFull) => {
            plan.count();
            ffi::SQLITE_FULL
        }
        Some(StorageFault::ShortWrite) => {
            plan.count();
            // A torn write: the first half reaches the file, then the device fails.
            let half = amount / 2;
            if half > 0 {
                let _ = write(real, buf, half, offset);
            }
            ffi::SQLITE_IOERR_WRITE
        }
        Some(StorageFault::SlowDisk { delay_ms }) => {
            plan.count();
            std::thread::sleep(Duration::from_millis(delay_ms));
            write(real, buf, amount, offset)
        }
        Some(StorageFault::FsyncError) | None => write(real, buf, amount, offset),
    }
}

unsafe extern "C" fn f_truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    let (_, real, m) = parts(file);
    match m.xTruncate {
        Some(f) => f(real, size),
        None => ffi::SQLITE_IOERR_TRUNCATE,
    }
}

unsafe extern "C" fn f_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    let (ours, real, m) = parts(file);
    let Some(sync) = m.xSync else {
        return ffi::SQLITE_IOERR_FSYNC;
    };
    let plan = &(*ours.ctx).plan;
    match plan.current() {
        Some(StorageFault::FsyncError) => {
            plan.count();
            ffi::SQLITE_IOERR_FSYNC
        }
        Some(StorageFault::SlowDisk { delay_ms }) => {
            plan.count();
            std::thread::sleep(Duration::from_millis(delay_ms));
            sync(real, flags)
        }
        _ => sync(real, flags),
    }
}

unsafe extern "C" fn f_file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    let (_, real, m) = parts(file);
    match m.xFileSize {
        Some(f) => f(real, size),
        None => ffi::SQLITE_IOERR_FSTAT,
    }
}

unsafe extern "C" fn f_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    let (_, real, m) = parts(file);
    match m.xLock {
        Some(f) => f(real, level),
        None => ffi::SQLITE_IOERR_LOCK,
    }
}

unsafe extern "C" fn f_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    let (_, real, m) = parts(file);
    match m.xUnlock {
        Some(f) => f(real, level),
        None => ffi::SQLITE_IOERR_UNLOCK,
    }
}

unsafe extern "C" fn f_check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    let (_, real, m) = parts(file);
    match m.xCheckReservedLock {
        Some(f) => f(real, out),
        None => ffi::SQLITE_IOERR_CHECKRESERVEDLOCK,
    }
}

unsafe extern "C" fn f_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    let (_, real, m) = parts(file);
    match m.xFileControl {
        Some(f) => f(real, op, arg),
        None => ffi::SQLITE_NOTFOUND,
    }
}

unsafe extern "C" fn f_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    let (_, real, m) = parts(file);
    match m.xSectorSize {
        Some(f) => f(real),
        None => 4096,
    }
}

unsafe extern "C" fn f_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    let (_, real, m) = parts(file);
    match m.xDeviceCharacteristics {
        Some(f) => f(real),
        None => 0,
    }
}

unsafe extern "C" fn f_shm_map(
    file: *mut ffi::sqlite3_file,
    page: c_int,
    page_bytes: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    let (_, real, m) = parts(file);
    match m.xShmMap {
        Some(f) if m.iVersion >= 2 => f(real, page, page_bytes, extend, out),
        _ => ffi::SQLITE_IOERR_SHMMAP,
    }
}

unsafe extern "C" fn f_shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    let (_, real, m) = parts(file);
    match m.xShmLock {
        Some(f) if m.iVersion >= 2 => f(real, offset, n, flags),
        _ => ffi::SQLITE_IOERR_SHMLOCK,
    }
}

unsafe extern "C" fn f_shm_barrier(file: *mut ffi::sqlite3_file) {
    let (_, real, m) = parts(file);
    if let Some(f) = m.xShmBarrier.filter(|_| m.iVersion >= 2) {
        f(real)
    }
}

unsafe extern "C" fn f_shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    let (_, real, m) = parts(file);
    match m.xShmUnmap {
        Some(f) if m.iVersion >= 2 => f(real, delete),
        _ => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn f_fetch(
    file: *mut ffi::sqlite3_file,
    offset: ffi::sqlite3_int64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    let (_, real, m) = parts(file);
    match m.xFetch {
        Some(f) if m.iVersion >= 3 => f(real, offset, amount, out),
        _ => {
            // No memory map: SQLite falls back to xRead.
            *out = std::ptr::null_mut();
            ffi::SQLITE_OK
        }
    }
}

unsafe extern "C" fn f_unfetch(
    file: *mut ffi::sqlite3_file,
    offset: ffi::sqlite3_int64,
    p: *mut c_void,
) -> c_int {
    let (_, real, m) = parts(file);
    match m.xUnfetch {
        Some(f) if m.iVersion >= 3 => f(real, offset, p),
        _ => ffi::SQLITE_OK,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{Connection, OpenFlags};

    fn open(path: &std::path::Path, vfs: &str) -> Connection {
        let c = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), vfs).unwrap();
        c.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .unwrap();
        c
    }

    #[test]
    fn forwards_everything_and_fails_writes_only_while_the_fault_is_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let plan = FaultPlan::new();
        let vfs = register(plan.clone()).unwrap();
        let c = open(&path, &vfs);
        c.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")
            .unwrap();
        for fault in [
            StorageFault::DiskFull,
            StorageFault::FsyncError,
            StorageFault::ShortWrite,
        ] {
            plan.set(Some(fault));
            let err = c.execute("INSERT INTO t VALUES (2)", []).unwrap_err();
            let code = err.sqlite_error_code();
            assert!(
                matches!(
                    code,
                    Some(rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::SystemIoFailure)
                ),
                "{fault:?} gave {err}"
            );
            // Reads keep working during the fault.
            let n: i64 = c
                .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
                .unwrap();
            assert_eq!(n, 1, "{fault:?}: the failed insert is not visible");
            plan.clear();
        }
        plan.set(Some(StorageFault::SlowDisk { delay_ms: 5 }));
        c.execute("INSERT INTO t VALUES (3)", []).unwrap();
        plan.clear();
        assert!(plan.injected() >= 4);
        drop(c);
        // Reopened with the default VFS: exactly what committed is there.
        let c = Connection::open(&path).unwrap();
        let xs: Vec<i64> = c
            .prepare("SELECT x FROM t ORDER BY x")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(xs, vec![1, 3]);
    }
}
