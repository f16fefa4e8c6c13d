"""The local stack: moto's server and a mosquitto with mutual TLS, on 127.0.0.1."""
