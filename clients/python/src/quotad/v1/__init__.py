"""Generated protobuf and gRPC code for proto/quotad/v1 (do not edit: tools/stubs.sh).

The typed client in `quotad` is built on these; they are public for calls it does not wrap:
`from quotad.v1 import quotad_pb2, quotad_pb2_grpc`.
"""
