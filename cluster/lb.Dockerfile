# The cluster's load-balanced entry point: HAProxy, round robin over the
# healthy nodes. Built the ordinary way it takes the official image; offline,
# LB_BASE_IMAGE names the local Debian image, which includes haproxy.
ARG LB_BASE_IMAGE=haproxy:2.8
FROM ${LB_BASE_IMAGE}
COPY cluster/haproxy.cfg /usr/local/etc/haproxy/haproxy.cfg
EXPOSE 7310
CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
