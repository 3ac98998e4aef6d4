//! Durable definitions in sled 0.34.7: vhosts, users, durable exchanges,
//! durable queues (with a stable id for the message log), bindings between
//! durable ends. Every change is followed by `flush()` and an `fdatasync` of
//! sled's files, because sled's flush is not an fsync (storage.md §1.2).
//! A store that cannot be opened or decoded stops startup; nothing here ever
//! rewrites data it could not read.

use crate::protocol::FieldTable;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeDef {
    pub vhost: String,
    pub name: String,
    pub kind: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDef {
    pub vhost: String,
    pub name: String,
    /// Stable id used in the message log.
    pub id: u64,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingDef {
    pub vhost: String,
    pub source: String,
    pub destination: String,
    /// "queue" or "exchange", as in RabbitMQ's definitions.
    pub destination_type: String,
    pub routing_key: String,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserDef {
    pub name: String,
    pub password_hash: String,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VHostDef {
    pub name: String,
}

/// Everything recovered at startup.
#[derive(Debug, Default)]
pub struct Loaded {
    pub vhosts: Vec<VHostDef>,
    pub users: Vec<UserDef>,
    pub exchanges: Vec<ExchangeDef>,
    pub queues: Vec<QueueDef>,
    pub bindings: Vec<BindingDef>,
}

#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

pub struct Definitions {
    db: sled::Db,
    path: PathBuf,
}

impl std::fmt::Debug for Definitions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Definitions").field("path", &self.path).finish()
    }
}

const TREES: &[&str] = &["vhosts", "users", "exchanges", "queues", "bindings"];

fn key(parts: &[&str]) -> Vec<u8> {
    parts.join("\u{0}").into_bytes()
}

/// Marks a data directory whose definitions store was initialized; an
/// empty store next to it means sled lost data (sled 0.34 starts empty on a
/// damaged log rather than failing).
const MARKER: &str = "definitions.initialized";

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), target)?;
        }
    }
    Ok(())
}

impl Definitions {
    /// Opens the store in `path` and loads it. A store that cannot be opened,
    /// decoded, or that comes back empty after it was initialized is an
    /// error, and its files are put back exactly as they were found (sled may
    /// rewrite a damaged log while opening it).
    pub fn open_checked(path: &Path, cache_bytes: u64) -> Result<(Self, Loaded), StoreError> {
        let parent = path.parent().unwrap_or(Path::new("."));
        let marker = parent.join(MARKER);
        let backup = parent.join("definitions.pre-open");
        let existed = path.join("db").exists();
        if existed {
            let _ = std::fs::remove_dir_all(&backup);
            copy_dir(path, &backup).map_err(|e| {
                StoreError(format!("cannot back up {} before opening it: {e}", path.display()))
            })?;
        }
        let result = Self::open(path, cache_bytes).and_then(|d| {
            let loaded = d.load()?;
            if marker.exists() && loaded.vhosts.is_empty() {
                return Err(StoreError(format!(
                    "definitions store {} is damaged: it was initialized but reads back empty",
                    path.display()
                )));
            }
            Ok((d, loaded))
        });
        match result {
            Ok(ok) => {
                if !marker.exists() {
                    std::fs::write(&marker, b"warren definitions store\n")
                        .map_err(|e| StoreError(format!("cannot write {}: {e}", marker.display())))?;
                }
                let _ = std::fs::remove_dir_all(&backup);
                Ok(ok)
            }
            Err(e) => {
                if existed {
                    // sled has been dropped with the failed result: put the files back.
                    let _ = std::fs::remove_dir_all(path);
                    if let Err(re) = copy_dir(&backup, path) {
                        return Err(StoreError(format!(
                            "{e}; restoring the original files also failed: {re} (a copy is in {})",
                            backup.display()
                        )));
                    }
                    let _ = std::fs::remove_dir_all(&backup);
                }
                Err(StoreError(format!("{e}; the store was left as found and the broker will not start")))
            }
        }
    }

    pub fn open(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(|e| StoreError(format!("cannot open definitions store {}: {e}", path.display())))?;
        Ok(Definitions { db, path: path.to_path_buf() })
    }

    fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        self.db.open_tree(name).map_err(|e| StoreError(format!("definitions store: tree {name}: {e}")))
    }

    /// Reads every definition; any undecodable entry is an error.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        fn all<T: for<'de> Deserialize<'de>>(d: &Definitions, tree: &str) -> Result<Vec<T>, StoreError> {
            let mut out = Vec::new();
            for item in d.tree(tree)?.iter() {
                let (k, v) =
                    item.map_err(|e| StoreError(format!("definitions store: reading {tree}: {e}")))?;
                let def = serde_json::from_slice(&v).map_err(|e| {
                    StoreError(format!(
                        "definitions store {}: corrupt entry in {tree} ({}): {e}",
                        d.path.display(),
                        String::from_utf8_lossy(&k).replace('\u{0}', "/")
                    ))
                })?;
                out.push(def);
            }
            Ok(out)
        }
        let _ = TREES;
        Ok(Loaded {
            vhosts: all(self, "vhosts")?,
            users: all(self, "users")?,
            exchanges: all(self, "exchanges")?,
            queues: all(self, "queues")?,
            bindings: all(self, "bindings")?,
        })
    }

    fn put<T: Serialize>(&self, tree: &str, k: Vec<u8>, v: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(v).map_err(|e| StoreError(format!("encode {tree}: {e}")))?;
        self.tree(tree)?.insert(k, bytes).map_err(|e| StoreError(format!("write {tree}: {e}")))?;
        self.commit()
    }

    fn del(&self, tree: &str, k: Vec<u8>) -> Result<(), StoreError> {
        self.tree(tree)?.remove(k).map_err(|e| StoreError(format!("delete {tree}: {e}")))?;
        self.commit()
    }

    /// sled's flush, then a real fdatasync of its files.
    fn commit(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| StoreError(format!("flush definitions: {e}")))?;
        for name in ["db", "conf"] {
            let p = self.path.join(name);
            if let Ok(f) = std::fs::File::open(&p) {
                f.sync_data().map_err(|e| StoreError(format!("fdatasync {}: {e}", p.display())))?;
            }
        }
        Ok(())
    }

    pub fn next_id(&self) -> Result<u64, StoreError> {
        // sled's generate_id is persistent and monotonic; +1 keeps 0 free as "none".
        self.db.generate_id().map(|i| i + 1).map_err(|e| StoreError(format!("generate id: {e}")))
    }

    pub fn put_vhost(&self, v: &VHostDef) -> Result<(), StoreError> {
        self.put("vhosts", key(&[&v.name]), v)
    }

    pub fn put_user(&self, u: &UserDef) -> Result<(), StoreError> {
        self.put("users", key(&[&u.name]), u)
    }

    pub fn put_exchange(&self, x: &ExchangeDef) -> Result<(), StoreError> {
        self.put("exchanges", key(&[&x.vhost, &x.name]), x)
    }

    pub fn delete_exchange(&self, vhost: &str, name: &str) -> Result<(), StoreError> {
        self.del("exchanges", key(&[vhost, name]))
    }

    pub fn put_queue(&self, q: &QueueDef) -> Result<(), StoreError> {
        self.put("queues", key(&[&q.vhost, &q.name]), q)
    }

    pub fn delete_queue(&self, vhost: &str, name: &str) -> Result<(), StoreError> {
        self.del("queues", key(&[vhost, name]))
    }

    fn binding_key(b: &BindingDef) -> Vec<u8> {
        let args = serde_json::to_string(&b.arguments).unwrap_or_default();
        key(&[&b.vhost, &b.source, &b.destination_type, &b.destination, &b.routing_key, &args])
    }

    pub fn put_binding(&self, b: &BindingDef) -> Result<(), StoreError> {
        self.put("bindings", Self::binding_key(b), b)
    }

    pub fn delete_binding(&self, b: &BindingDef) -> Result<(), StoreError> {
        self.del("bindings", Self::binding_key(b))
    }

    /// Deletes every binding of `vhost` whose source or destination is `name`
    /// of `kind` ("queue" or "exchange").
    pub fn delete_bindings_of(&self, vhost: &str, kind: &str, name: &str) -> Result<(), StoreError> {
        let tree = self.tree("bindings")?;
        let mut doomed = Vec::new();
        for item in tree.scan_prefix(key(&[vhost, ""])) {
            let (k, v) = item.map_err(|e| StoreError(format!("reading bindings: {e}")))?;
            if let Ok(b) = serde_json::from_slice::<BindingDef>(&v)
                && ((b.destination_type == kind && b.destination == name)
                    || (kind == "exchange" && b.source == name))
            {
                doomed.push(k);
            }
        }
        if doomed.is_empty() {
            return Ok(());
        }
        for k in doomed {
            tree.remove(k).map_err(|e| StoreError(format!("delete binding: {e}")))?;
        }
        self.commit()
    }
}
