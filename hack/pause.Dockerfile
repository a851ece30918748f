# The node's sandbox image (registry.k8s.io/pause) from a locally built static pause binary, for a
# machine without a registry; hack/images.sh builds it with the binary as the only file in the
# context. Same layout as upstream's: /pause, run as 65535.
FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
