//! End-to-end tests of the daemon: a real `Server` on a temporary unix
//! socket (and TCP on 127.0.0.1:0 for authentication), driven through the
//! blocking client, with the fake backend of `crate::testing`.
//! No root needed; network traffic stays on loopback and unix sockets.

mod api;
mod events;
mod exec;
mod files;
pub(crate) mod harness;
mod images;
mod load;
mod restart;
