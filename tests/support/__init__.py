"""What the tests share: fixtures, helpers, an independent MQTT observer, a throttling proxy."""
