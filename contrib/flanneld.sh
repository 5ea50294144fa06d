#!/bin/sh
# flanneld-rs started the way Go flanneld hosts start it (/opt/flannel/flanneld.sh, run by
# supervisord from /opt/flannel). Edit the values for this host; every flag can also come from a
# FLANNELD_<FLAG> variable. `exec` matters: supervisord signals this process, which then is flanneld
# itself (a shell in between would leave flanneld running on `supervisorctl restart`).
exec ./flanneld \
  --public-ip=10.4.7.21 \
  --etcd-endpoints=https://10.4.7.12:2379,https://10.4.7.21:2379,https://10.4.7.22:2379 \
  --etcd-prefix=/coreos.com/network \
  --etcd-keyfile=./certs/client-key.pem \
  --etcd-certfile=./certs/client.pem \
  --etcd-cafile=./certs/ca.pem \
  --iface=eth0 \
  --subnet-file=./subnet.env \
  --ip-masq \
  --healthz-port=2401
