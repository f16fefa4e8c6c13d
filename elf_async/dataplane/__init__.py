"""The data plane: MQTT over mutual TLS, the hot path's takeover of aiomqtt and paho,
schedules, senders, subscribers. No AWS API call: it knows endpoints and identities only."""
