"""KRX tick observer: KIS real-time trades through Kafka and Faust into JSONL and PostgreSQL."""
