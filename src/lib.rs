//! pxesrv: an HTTP boot-config server for iPXE clients, and the storage companion that gives
//! diskless clients their own copy-on-write iSCSI disk.
//!
//! The boot tree on disk is the database: `once/`, `static/` and `default` decide what each
//! client boots, and operators change it with `ln -s` or the admin subcommands.

pub mod admin;
pub mod boottree;
pub mod config;
pub mod http;
pub mod identity;
pub mod logging;
pub mod process;
pub mod script;
pub mod server;
pub mod watch;
