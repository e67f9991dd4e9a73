"""Talking to the iMednet API through the official SDK: one retry policy, streamed
pages, safe writes. No Prefect imports: the flows wrap these functions."""
