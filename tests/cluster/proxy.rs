//! A minimal TCP load balancer for the tests: listens on a loopback port and hands each
//! connection to the next backend (round robin) that accepts a TCP connection, then copies bytes
//! both ways. When a backend dies its connections end, and clients that reconnect land on a
//! live node: what a load balancer in front of a cluster does, with no sticky sessions.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

pub struct Balancer {
    pub addr: SocketAddr,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
    /// Connections handed to each backend so far, by address.
    pub handed: Arc<Mutex<Vec<(SocketAddr, u32)>>>,
    task: JoinHandle<()>,
}

impl Balancer {
    pub async fn start(backends: Vec<SocketAddr>) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind balancer");
        let addr = listener.local_addr().unwrap();
        let backends = Arc::new(Mutex::new(backends));
        let handed = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let backends = backends.clone();
            let handed = handed.clone();
            async move {
                // Dropped with the accept loop: every proxied connection ends with it.
                let mut conns = JoinSet::new();
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let list = backends.lock().unwrap().clone();
                    let start = next.fetch_add(1, Ordering::Relaxed);
                    let handed = handed.clone();
                    conns.spawn(async move {
                        for k in 0..list.len() {
                            let target = list[(start + k) % list.len()];
                            let Ok(Ok(server)) = tokio::time::timeout(
                                Duration::from_secs(1),
                                TcpStream::connect(target),
                            )
                            .await
                            else {
                                continue;
                            };
                            let _ = server.set_nodelay(true);
                            {
                                let mut h = handed.lock().unwrap();
                                match h.iter_mut().find(|(a, _)| *a == target) {
                                    Some((_, n)) => *n += 1,
                                    None => h.push((target, 1)),
                                }
                            }
                            let (mut client, mut server) = (client, server);
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            return;
                        }
                        // No backend alive: the client's connection just closes.
                    });
                    while conns.try_join_next().is_some() {}
                }
            }
        });
        Balancer {
            addr,
            backends,
            handed,
            task,
        }
    }

    /// `ws://HOST:PORT` of the balancer.
    pub fn base(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Replaces the backend list (e.g. after a node restarted on a new port).
    pub fn set_backends(&self, backends: Vec<SocketAddr>) {
        *self.backends.lock().unwrap() = backends;
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
