//! The dllama wire protocol with airllama-net's sans-IO codec: encode the handshake a root
//! sends a worker and a control packet, print their bytes, and decode them back; then show
//! that hostile bytes are a typed error, never a panic.
//!
//! Run it with `cargo run -p airllama-net --example handshake`.
use airllama_net::{ControlPacket, Handshake, PeerAddress};

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() -> Result<(), airllama_net::DecodeError> {
    // What a root with two workers sends worker 0: the cluster size, its index, and the
    // address of the other worker (the workers connect to each other).
    let hello = Handshake {
        n_workers: 2,
        worker_index: 0,
        peers: vec![PeerAddress {
            host: "10.0.0.3".into(),
            port: 9998,
        }],
    };
    let mut bytes = Vec::new();
    hello.encode(&mut bytes);
    println!("handshake ({} bytes): {}", bytes.len(), hex(&bytes));
    assert_eq!(Handshake::decode(&bytes)?, hello);

    // Each forward starts with a control packet (batch size 0 means stop).
    let stop = ControlPacket::decode(&[47, 0, 0, 0, 0, 0, 0, 0])?;
    println!("control packet {stop:?}: stop = {}", stop.is_stop());

    // A truncated handshake is refused with a typed error naming what is missing.
    match Handshake::decode(&bytes[..bytes.len() - 3]) {
        Ok(h) => println!("unexpectedly decoded {h:?}"),
        Err(e) => println!("truncated handshake: {e}"),
    }
    Ok(())
}
