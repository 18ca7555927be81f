// Package message is Ferry's protocol-neutral message model.
//
// Every message that enters the gateway, over MQTT, STOMP or from the
// upstream broker, becomes a *Message before it is routed, spooled or
// fanned out. The package owns:
//
//   - Message and its versioned binary encoding (Encode, Decode). The
//     encoding is what the spool stores, so it is forward-checked: the first
//     byte is the format version and Decode refuses versions it does not know.
//   - The topic mapping between MQTT topics and STOMP destinations
//     (ToSTOMP, FromSTOMP), see topic.go for the rules.
//   - Routing inputs (Route, Router) and dedupe key extraction, so that both
//     protocols apply one set of rules supplied by the gateway.
//   - The Sink interface that ingress calls, and the sentinel errors a Sink
//     returns, which ingress maps to protocol answers (MQTT reason codes,
//     STOMP ERROR frames).
//
// The package uses the standard library only and holds no goroutines.
package message
