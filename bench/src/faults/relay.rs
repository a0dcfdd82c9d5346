//! A TCP relay on loopback in front of a real server, to take that server off the network without
//! losing its state: [`Relay::cut`] closes the listening socket (new connections are refused) and
//! resets every open connection; [`Relay::restore`] listens again on the same port. The OpenID
//! Provider keeps its signing keys only in memory, so "IdP down" is done this way.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};

struct State {
    up: AtomicBool,
    generation: AtomicU64,
    conns: Mutex<Vec<TcpStream>>,
}

/// A relay from a loopback port to `upstream`.
pub struct Relay {
    addr: SocketAddr,
    upstream: SocketAddr,
    state: Arc<State>,
}

impl Relay {
    /// Listens on a free loopback port.
    pub fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            up: AtomicBool::new(true),
            generation: AtomicU64::new(0),
            conns: Mutex::new(Vec::new()),
        });
        let relay = Self { addr, upstream, state };
        relay.serve(listener);
        Ok(relay)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn serve(&self, listener: TcpListener) {
        let state = self.state.clone();
        let upstream = self.upstream;
        let generation = state.generation.load(Ordering::SeqCst);
        let _ = listener.set_nonblocking(true);
        std::thread::spawn(move || {
            loop {
                if state.generation.load(Ordering::SeqCst) != generation {
                    return; // cut: the listener is dropped, connections are refused
                }
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(2)) else {
                            continue;
                        };
                        pipe(&state, client, server);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
    }

    /// Takes the upstream off the network: refuses new connections, resets open ones.
    pub fn cut(&self) {
        self.state.up.store(false, Ordering::SeqCst);
        self.state.generation.fetch_add(1, Ordering::SeqCst);
        for c in self.state.conns.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        // Let the accept loop notice and drop its listener.
        std::thread::sleep(Duration::from_millis(20));
    }

    /// Listens again on the same port.
    pub fn restore(&self) -> Result<()> {
        let mut last = None;
        for _ in 0..100 {
            match TcpListener::bind(self.addr) {
                Ok(l) => {
                    self.state.up.store(true, Ordering::SeqCst);
                    self.serve(l);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(last.map(anyhow::Error::from).unwrap_or_else(|| anyhow::anyhow!("bind"))).context("relay restore")
    }
}

fn pipe(state: &Arc<State>, client: TcpStream, server: TcpStream) {
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { return };
    {
        let mut conns = state.conns.lock().unwrap_or_else(PoisonError::into_inner);
        conns.retain(|c| c.peer_addr().is_ok());
        if let (Ok(a), Ok(b)) = (client.try_clone(), server.try_clone()) {
            conns.push(a);
            conns.push(b);
        }
    }
    std::thread::spawn(move || copy(client, s2));
    std::thread::spawn(move || copy(server, c2));
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn relays_refuses_when_cut_and_relays_again() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let up = server.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut s in server.incoming().flatten() {
                let _ = s.write_all(b"hi");
            }
        });
        let relay = Relay::start(up).unwrap();
        let read = |a| {
            let mut s = TcpStream::connect(a)?;
            let mut b = [0u8; 2];
            s.read_exact(&mut b)?;
            Ok::<_, std::io::Error>(b)
        };
        assert_eq!(&read(relay.addr()).unwrap(), b"hi");
        relay.cut();
        assert!(read(relay.addr()).is_err());
        relay.restore().unwrap();
        assert_eq!(&read(relay.addr()).unwrap(), b"hi");
    }
}
