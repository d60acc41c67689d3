//! etcd's Cluster service: member list and runtime membership changes.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::caller::caller;
use super::error::node_status;
use crate::node::Node;
use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::pb::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest,
    MemberUpdateResponse,
};

pub struct ClusterService {
    pub node: Arc<Node>,
}

impl ClusterService {
    fn header(&self) -> Option<crate::pb::etcdserverpb::ResponseHeader> {
        Some(self.node.header(0))
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let request = request.into_inner();
        let id = self
            .node
            .member_add(&caller, request.peer_ur_ls.clone(), request.is_learner)
            .await
            .map_err(node_status)?;
        let members = self.node.members();
        let member = members.iter().find(|m| m.id == id).cloned().unwrap_or(Member {
            id,
            peer_ur_ls: request.peer_ur_ls,
            is_learner: request.is_learner,
            ..Default::default()
        });
        Ok(Response::new(MemberAddResponse {
            header: self.header(),
            member: Some(member),
            members,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let id = request.into_inner().id;
        self.node.member_remove(&caller, id).await.map_err(node_status)?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(),
            members: self.node.members(),
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let request = request.into_inner();
        self.node
            .member_update(&caller, request.id, request.peer_ur_ls)
            .await
            .map_err(node_status)?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.header(),
            members: self.node.members(),
        }))
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.node.linearizable_barrier().await.map_err(node_status)?;
        }
        Ok(Response::new(MemberListResponse {
            header: self.header(),
            members: self.node.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let id = request.into_inner().id;
        self.node.member_promote(&caller, id).await.map_err(node_status)?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.header(),
            members: self.node.members(),
        }))
    }
}
