// Package bridgetest holds test helpers for the bridge and everything that
// talks to an upstream MQTT broker: a real mosquitto on a free loopback port
// (StartMosquitto), certificates made in the test (NewCerts), a
// fault-injecting TCP proxy (Proxy) and a recording subscriber
// (Subscriber). It is imported only by tests.
package bridgetest
