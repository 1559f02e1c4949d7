//! Framing: turning a datagram or a TCP byte stream into messages.
//! PLACEHOLDER until the framer lands.
