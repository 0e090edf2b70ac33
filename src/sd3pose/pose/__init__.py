"""Pose extraction: photo -> OpenPose keypoints (MediaPipe, CPU) -> the skeleton map ControlNets expect."""

from sd3pose.pose.control import ControlResult, build_control_image, looks_like_pose_map
from sd3pose.pose.detect import PoseDetector, get_detector
from sd3pose.pose.keypoints import Person, Pose
from sd3pose.pose.openpose_json import pose_from_openpose_json, pose_to_openpose_json
from sd3pose.pose.render import render_pose

__all__ = [
    "ControlResult",
    "Person",
    "Pose",
    "PoseDetector",
    "build_control_image",
    "get_detector",
    "looks_like_pose_map",
    "pose_from_openpose_json",
    "pose_to_openpose_json",
    "render_pose",
]
