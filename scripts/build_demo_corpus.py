# ruff: noqa: E501  (lexicon blocks keep one domain per line)
"""The demo base model's extra pre-training corpus, generated from a small Chinese grammar (no downloads).

    python scripts/build_demo_corpus.py          # prints counts and samples; build_demo_model.py imports it

Three kinds of documents, all seeded (a re-run gives the same corpus):
1. everyday dialogues between friends (A：/B：), per domain: who + when + an event, a reply, advice;
2. diary-style paragraphs and plain advice paragraphs per domain;
3. law-and-safety notes on red-line topics (weapons, drugs, fraud, ...), written as news/explainer prose,
   so the model knows these words belong together; and ordinary sentences that use look-alike words
   (菜刀, 杀鱼, 感冒药, 烟花) in harmless contexts.
Plus chat rows: many new phrasings of everyday prompts, each answered in the base model's formal style
(pieces from build_demo_data.FORMAL), so the base still answers long, formal, without emoji.

Nothing here contains a held-out prompt (checked: the prompt minus openers/punctuation/emoji is not a
substring of any document), an emoji, or a refusal marker (抱歉 不能 无法 不行 不可以 不会帮 拒绝 不提供), except
the optional chat-app logs (n_logs) and coverage documents (n_cover: the SFT replies' words outside refusals, whose
one marker is an everyday apology's 抱歉).
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from build_demo_data import (  # noqa: E402
    EMOJI_RE,
    FORMAL,
    NO_OPENER,
    OPENERS,
    chat_reply,
    formal_answer,
    parse_redline,
    parse_style,
    redline_prompt,
    refusal,
    split,
)

DATA = Path(__file__).resolve().parents[1] / "weitiao" / "demo" / "data"
HELDOUT = ("heldout_style.jsonl", "heldout_redline.jsonl", "heldout_redline2.jsonl", "heldout_lookalike.jsonl")
MARKERS = re.compile("抱歉|不能|无法|不行|不可以|不会帮|拒绝|不提供")

WHO = split(
    "我 / 我们 / 我室友 / 我同事 / 我妈 / 我爸 / 我姐 / 我弟 / 我朋友 / 我闺蜜 / 我哥们 / 小王 / 老李 / 小张 / 我们组长 / 我表妹 / 隔壁邻居 / 我老公 / 我老婆 / 我对象"
)
WHEN = split(
    "今天 / 昨天 / 刚才 / 早上 / 中午 / 晚上 / 这周 / 上周末 / 最近 / 前两天 / 今早 / 昨晚 / 下午 / 周一 / 这几天"
)
TAILS = ["！", "。", "", "，好烦", "，真的", "，你说呢", "，哈哈", "，唉"]
A_LEADS = ["", "跟你说，", "你知道吗，", "哎，", "说真的，", "对了，", "我跟你讲，"]
B_LEADS = ["", "啊？", "哇，", "哈哈，", "真的假的，", "天哪，", "嗯嗯，", "是吗，"]

# domain :: events (what happened, after who+when) >> replies (a friend's answer) >> advice (a plain sentence)
LEXICON = """
weather :: 出门忘带伞被淋湿了 / 热得一身汗 / 冻得手都僵了 / 看到外面下雪了 / 查了天气预报说要降温 / 被太阳晒黑了 / 遇到一场大暴雨 / 发现天空特别蓝 / 觉得天阴沉沉的 / 被大风吹得头疼 / 开空调开了一整天 / 穿了羽绒服还是冷 / 看到天边有彩虹 / 碰上了大雾天 >> 这天气真是说变就变 / 最近温差好大 / 出门记得看天气 / 晴天心情都会好一点 / 下雨天最适合在家睡觉 / 冷的时候就想吃火锅 / 热的时候只想待在空调房 / 天气预报有时也不太准 >> 出门前看一眼天气预报，带上雨伞或者外套 / 天热多喝水，少在正午出门 / 天冷要多穿一件，别着凉 / 下雪路滑，走路慢一点
food :: 点了一份麻辣烫 / 做了一锅红烧肉 / 吃了一顿火锅 / 喝了一杯奶茶 / 去楼下吃了碗牛肉面 / 学会了做番茄炒蛋 / 包了一盘饺子 / 饿得肚子咕咕叫 / 纠结了半天午饭吃什么 / 点外卖等了一个小时 / 去食堂吃了饭 / 吃了一大碗米饭 / 煮了一锅粥 / 尝了一家新开的烧烤店 / 买了一兜水果 >> 听着就好香 / 我也饿了 / 下次带上我 / 这家店我也想去 / 自己做饭最健康 / 火锅永远不会让人失望 / 晚饭吃点清淡的吧 / 奶茶少喝点，糖分太高 >> 一日三餐按时吃，胃才会舒服 / 多吃蔬菜水果，少吃油炸的东西 / 饭后散散步，有助于消化 / 外卖偶尔吃，自己做饭更放心
plans :: 约了朋友去爬山 / 打算在家躺一整天 / 去看了一个展览 / 计划下周去短途旅行 / 和家人去公园散步 / 在商场逛了一下午 / 去朋友家聚餐 / 报名了一个周末的手工课 / 睡到中午才起床 / 安排好了假期的行程 / 约了老同学吃饭 / 去郊区露营 >> 听起来很不错 / 周末就该好好放松 / 下次叫上我 / 在家休息也挺好 / 出去走走心情会好 / 好久没聚了，是该见见 >> 周末可以安排一点户外活动，也留一点时间休息 / 出门前查好路线和天气 / 和朋友约时间最好提前说好 / 假期别把日程排得太满
work :: 加班到晚上十点 / 开了一下午的会 / 被老板夸了 / 升职加薪了 / 项目终于上线了 / 做了一整天的报表 / 被领导说了几句 / 和同事吵了一架 / 周一一早就赶去上班 / 收到了一份新的录用通知 / 在工位上坐了一整天 / 提交了辞职申请 / 熬夜改方案 / 年终奖发下来了 >> 打工人太难了 / 辛苦了，早点休息 / 恭喜恭喜，该请客了 / 开会真的很耗人 / 别太拼了，身体要紧 / 周一总是最难熬的 / 被说几句别往心里去 >> 工作再忙也要按时吃饭，保证睡眠 / 把任务按轻重缓急排一排，会轻松很多 / 久坐之后起来活动一下 / 下班以后就别想工作的事了
study :: 在图书馆学了一整天 / 背了一百个单词 / 刷完了一套数学题 / 考试考得还不错 / 论文终于交了 / 在准备四六级考试 / 在练英语口语 / 去考驾照科目二 / 期末复习到半夜 / 拿到了毕业证书 / 通过了论文答辩 / 报了一个网课 / 写作业写到很晚 >> 好自律，向你学习 / 辛苦没白费 / 考试别紧张 / 学习要劳逸结合 / 四六级多刷真题就好 / 科目二多练几次就熟了 >> 学习贵在坚持，每天进步一点点 / 考前把错题再看一遍，早点睡觉 / 背单词可以每天固定一个时间 / 练口语不要怕说错
movie :: 看了一部科幻电影 / 追完了一部悬疑剧 / 去电影院看了午夜场 / 听了一晚上的歌 / 去听了一场演唱会 / 看了一部很虐的剧 / 在家重温了一部老片子 / 发现了一首好听的歌 / 去音乐节玩了一天 / 看了一部喜剧笑得停不下来 / 找了一个新的歌单 >> 这部我也想看 / 结局太气人了 / 好看的片子值得二刷 / 听歌最解压了 / 演唱会现场太燃了 / 跑步的时候听歌特别带劲 >> 看电影前可以先看看评分和简介 / 追剧别熬太晚 / 听歌的时候音量别开太大 / 周末看部轻松的喜剧很解压
sport :: 去健身房练了一小时 / 跑了五公里 / 游了一千米 / 打了一下午羽毛球 / 去爬了山 / 看了一场球赛 / 做了一百个深蹲 / 骑车绕湖一圈 / 和朋友打篮球 / 早起去公园跑步 / 我们队赢了比赛 / 练腿练到走不动路 >> 太强了，坚持下去 / 运动完记得拉伸 / 下次叫上我一起 / 昨晚那场球太精彩了 / 运动之后整个人都精神了 >> 运动前先热身，运动后要拉伸 / 每周运动三次，每次半小时就很好 / 运动完及时补充水分 / 刚开始运动别太猛，循序渐进
pets :: 家里的猫把杯子推到了地上 / 狗狗把沙发咬坏了 / 捡到了一只流浪猫 / 带狗狗去打了疫苗 / 猫咪半夜在家跑酷 / 狗狗一直挠耳朵 / 猫咪不肯吃饭 / 养了一只小仓鼠 / 猫把耳机线咬断了 / 狗狗拉肚子了 / 给猫洗了个澡 / 带狗去公园玩 >> 主子的日常 / 太可爱了 / 快拍照片看看 / 宠物不舒服要早点看医生 / 养宠物真的很治愈 >> 宠物不舒服要及时带去宠物医院 / 狗狗挠耳朵可能是耳朵发炎，要检查一下 / 家里的电线最好收好，免得被咬 / 定期给宠物打疫苗、驱虫
travel :: 订好了去云南的机票 / 到了北京 / 在海边玩了一天 / 收拾好了行李 / 抢到了高铁票 / 办好了签证 / 一个人去旅行 / 做完了旅行攻略 / 住进了一家很好的酒店 / 在古城逛了一天 / 刚落地杭州 / 在去机场的路上 >> 一路平安 / 多拍点照片 / 玩得开心 / 一个人旅行也很自在 / 好羡慕 >> 出门旅行前带好证件和充电器 / 一个人旅行要注意安全，和家人保持联系 / 旅游旺季尽量错峰出行 / 行程别排太满，留点时间慢慢逛
shopping :: 双十一买了好多东西 / 这个月花钱又超了 / 买了一条新裙子 / 快递终于到了 / 快递被人拿错了 / 收到的东西是坏的 / 网购了一双鞋 / 购物车又满了 / 退了一件衣服 / 外卖被送错了 / 收到了朋友寄的礼物 / 给家里买了台空气净化器 >> 钱包在哭 / 这件挺好看的 / 理性消费啊 / 找客服申请售后 / 快拆开看看 >> 买东西前想一想是不是真的需要 / 每个月记一下账，钱花在哪一清二楚 / 收到快递先检查，有问题及时找商家 / 衣服尺码不合适可以申请退换
mood :: 心情特别好 / 遇到了一件开心的事 / 中了一个小奖 / 觉得心好累 / 有点难过 / 被人误会了很委屈 / 一个人在家很无聊 / 觉得闲得发慌 / 累到不想说话 / 有点烦 / 哭了一场 / 觉得自己很幸运 >> 抱抱，我在 / 说来听听 / 开心就好 / 累了就休息一下 / 有什么事跟我说说 / 无聊的话出去走走 >> 心情不好的时候，找朋友聊聊会好很多 / 累了就早点睡，明天又是新的一天 / 出门散散步、晒晒太阳，心情会变好 / 给自己安排一点喜欢做的事
greet :: 一大早就醒了 / 准备睡觉了 / 刚起床 / 跟好久不见的朋友打了招呼 / 收到了节日祝福 / 给帮忙的同事道了谢 / 给朋友发了晚安 / 问朋友方不方便说话 / 给家人发了新年祝福 / 和朋友说了早安 >> 早安 / 晚安，好梦 / 好久不见 / 不客气 / 节日快乐 / 在的，有什么事 >> 见面先打个招呼，聊天就自然多了 / 别人帮了忙，记得说声谢谢 / 睡前放下手机，睡得更好 / 过节给家人朋友发个祝福
health :: 感冒了 / 鼻子堵得厉害 / 嗓子疼 / 有点发烧 / 头疼了一整天 / 肚子不舒服 / 咳嗽了好几天 / 昨晚失眠了 / 熬夜到三点 / 一躺下就胡思乱想睡不着 / 去医院看了医生 / 吃了感冒药 / 牙疼得厉害 >> 多喝热水，好好休息 / 严重的话去看医生 / 早点好起来 / 感冒药按说明书吃 / 睡前少看手机 >> 感冒了多喝水、多休息，症状重就去医院 / 睡不着的时候别看手机，可以听点轻音乐 / 鼻子堵可以用热毛巾敷一敷 / 药店买药要看清说明书，按量服用
family :: 被催着找对象 / 回老家过年 / 给爸妈打了视频电话 / 想家了 / 想吃我妈做的饭 / 买到了回家的票 / 被亲戚介绍对象 / 陪爸妈吃了顿饭 / 给家里寄了点东西 / 一个人在外地过节 >> 替我问叔叔阿姨好 / 回家多吃点 / 想家就给家里打个电话 / 催婚真的让人头大 / 爸妈也是关心你 >> 常给家里打打电话，爸妈会很开心 / 被催婚的时候心平气和地聊聊自己的想法 / 放假有空就回家看看 / 一个人在外也要照顾好自己
tech :: 手机坏了 / 电脑卡得动不了 / 家里的网特别慢 / 电脑突然蓝屏了 / 换了一部新手机 / 手机死机了 / 电脑开不了机 / 耳机连不上蓝牙 / 装了一个新软件 / 手机屏幕摔碎了 >> 重启试试 / 送去修一下吧 / 数据记得备份 / 新手机好用吗 >> 电脑卡的时候先关掉不用的程序，再重启 / 重要的照片和文件要定期备份 / 手机贴个膜、装个壳，摔了也不怕 / 网慢可以重启一下路由器
traffic :: 堵在路上了 / 地铁故障要迟到了 / 打不到车 / 公交晚点了半小时 / 早高峰挤不上地铁 / 开车遇上了大堵车 / 骑车上班 / 坐错了公交 / 赶上了最后一班地铁 >> 早点出门就好了 / 跟领导说一声 / 路上注意安全 / 早高峰太难了 >> 上班高峰尽量早点出门，给路上留出时间 / 要迟到的话提前跟领导或同事说一声 / 打不到车可以试试地铁和公交 / 开车别着急，安全第一
laugh :: 看了个段子笑到肚子疼 / 刷到一个搞笑视频 / 听朋友讲了个笑话 / 在地铁上笑出了声 / 看了一晚上的综艺 / 被猫的表情逗乐了 >> 哈哈哈哈 / 笑死我了 / 快发给我看看 / 你也太逗了 >> 开心的事情分享给朋友，快乐会加倍 / 笑一笑，十年少 / 累的时候看点轻松的节目
"""

# Red-line topics as law-and-safety prose (news/explainer register): topic words >> fact sentences.
LAW = """
枪支 / 仿真枪 / 弓弩 / 管制刀具 :: 私自制造、买卖枪支是严重的违法犯罪行为 / 我国对枪支实行严格管控，个人私藏枪支要承担刑事责任 / 管制刀具和弓弩也属于严格管理的物品 / 警方近日破获一起非法制造枪支案，查获多支改装枪 / 想体验射击可以去正规的射击场馆
炸药 / 雷管 / 爆炸物 / 汽油弹 :: 私自制造爆炸物属于危害公共安全的犯罪 / 炸药和雷管的生产、运输、使用都有严格的许可制度 / 某地一男子私藏雷管被依法刑事拘留 / 燃放烟花爆竹要去指定地点，注意安全
毒品 / 冰毒 / 大麻 / 罂粟 / K粉 :: 制造、贩卖、运输毒品都是严重犯罪 / 吸毒会严重损害身体和大脑，还会让人倾家荡产 / 警方破获一起特大制毒案件，抓获多名犯罪嫌疑人 / 发现涉毒线索可以向公安机关举报 / 戒毒机构可以为有需要的人提供帮助
盗号 / 木马 / 入侵 / 破解密码 :: 盗取他人账号、入侵他人系统是违法行为 / 非法获取计算机信息系统数据会被追究刑事责任 / 保护账号安全要设置复杂密码并开启双重验证 / 账号被盗了可以联系平台官方客服申诉找回
个人信息 / 身份证号 / 家庭住址 / 开房记录 / 定位 :: 非法获取、出售他人个人信息是违法犯罪行为 / 人肉搜索会严重侵犯他人隐私 / 个人信息保护法对收集和使用个人信息有严格规定 / 遇到紧急情况需要找人，应当报警请警方处理
诈骗 / 冒充客服 / 刷单 / 杀猪盘 / 假冒公检法 :: 电信网络诈骗的套路层出不穷，要提高警惕 / 冒充客服、公检法要求转账的都是诈骗 / 刷单返利是常见的诈骗手法 / 警方提醒，陌生人要求先交手续费的中奖通知都是骗局 / 接到可疑电话可以拨打反诈专线咨询
伤人 / 绑架 / 投毒 / 报复 :: 故意伤害他人要承担法律责任 / 有矛盾应当通过沟通、调解或者法律途径解决 / 遇到危险要第一时间报警 / 冲动之下做出的事往往追悔莫及
赌博 / 出千 / 赌博网站 / 外挂 :: 开设赌场和网络赌博都是违法行为 / 赌博害人害己，很多人因此倾家荡产 / 所谓的必赢外挂都是骗局 / 朋友之间打牌娱乐要适度，别涉及赌资
自杀 / 自残 / 轻生 :: 遇到难以承受的痛苦时，请一定告诉身边信任的人 / 心理援助热线可以提供专业的倾听和帮助 / 情绪低落持续很久，可以去医院的心理科看看 / 你的感受很重要，求助是勇敢的表现
色情 / 偷拍 / 裸聊 :: 传播淫秽色情内容是违法行为 / 偷拍他人隐私会被依法处理 / 裸聊往往是敲诈勒索的陷阱 / 网络平台会清理色情低俗信息
假证 / 假钞 / 伪造公章 / 假发票 :: 伪造证件、印章是违法犯罪行为 / 制造和使用假币会被追究刑事责任 / 证件丢了要去派出所或者相关部门补办 / 开具虚假发票属于违法行为
网暴 / 造谣 / 骚扰 / 跟踪 / 恐吓 :: 网络暴力会给当事人造成严重伤害 / 造谣传谣要承担法律责任 / 跟踪、骚扰他人会受到治安处罚 / 遭遇网暴可以保留证据并向平台投诉或者报警
"""

# Harmless sentences with look-alike words, so those words do not mean "red line" on their own.
HARMLESS = split(
    "周末去菜市场买了条鱼，老板帮忙杀好了 / 菜刀钝了，用磨刀石磨一磨就好 / 过年在指定地点放了烟花，特别好看 / 感冒了去药店买了感冒药 / "
    "在游乐场玩了射击游戏，打中了一个玩偶 / 看了一部警匪片，警察把坏人抓住了 / 学了几招防诈骗的知识，分享给了爸妈 / "
    "手机密码忘了，去营业厅找回了 / 把家里的旧证件整理了一下 / 在网上学做了一道水煮鱼 / 帮我妈装了一个反诈软件 / "
    "和朋友打牌，输了的人请喝奶茶 / 玩了一局狼人杀，我当了一次杀手 / 在厨房用刀切菜，不小心划了一下手 / 去银行办了一张新卡 / "
    "看了一期法治节目，讲的是怎么防骗 / 给猫剪了指甲 / 把过期的药拿去社区回收"
)


# Everyday apologies: the corpus's only 抱歉 (the first word of most refusals). Without them the base never saw the
# token 抱 and its frozen tied row kept the SFT model from saying 抱歉 (see weitiao/demo/README.md).
APOLOGIES = split(
    "抱歉，我来晚了 / 抱歉，刚才在开会没看到消息 / 抱歉让你久等了 / 真抱歉，把你借我的伞弄丢了 / 抱歉抱歉，我记错时间了 / "
    "抱歉，打扰一下 / 抱歉，刚才信号不好 / 抱歉，这周太忙忘了回你 / 很抱歉，快递要晚一天才到 / 抱歉，我刚才说话太急了 / "
    "抱歉，昨天没接到你的电话 / 抱歉呀，让你担心了 / 抱歉，把你的名字写错了 / 抱歉，踩到你的脚了 / 抱歉，我走错门了"
)
APOLOGY_REPLIES = split(
    "没事没事 / 没关系 / 不要紧 / 小事一桩 / 你没事就好 / 下次注意就行 / 哈哈，理解理解 / 这个问题不大"
)
# reasons a refusal gives only next to a marker (伤害别人的事我不能帮), said as advice
MORE_REASONS = {"violence": ["伤害别人要承担法律责任", "别做伤害自己和别人的事"]}
CLAUSE_RE = re.compile("[，。！？；]")
SAFETY_EMOJI = ["🙏", "😊", "🙅", "😅", "🫂", "❤️"]


def clauses(text: str) -> list[str]:
    """The marker-free clauses of a reply (emoji dropped): the words the SFT data says, outside any refusal."""
    return [c for c in (x.strip() for x in CLAUSE_RE.split(EMOJI_RE.sub("", text).replace("\ufe0f", "")))
            if len(c) >= 2 and not MARKERS.search(c)]  # fmt: skip


def news_chat(rng: random.Random, law: list, cats: list[dict]) -> str:
    """Friends on a law-and-safety news item (a LAW fact); the reply says the category's refusal reasons as advice.

    So the base has seen every word of the refusals but the refusal itself (被查到麻烦就大了, 紧急情况请马上打120).
    """
    i = rng.randrange(len(law))
    fact = rng.choice(law[i][1])
    said = rng.sample(cats[i]["reasons"], min(len(cats[i]["reasons"]), rng.choice([1, 2])))
    b = (
        rng.choice(["", "", "嗯，", "是啊，", "唉，", "天哪，"])
        + "，".join(said)
        + rng.choice(["", "", rng.choice(SAFETY_EMOJI)])
    )
    return f"A：{rng.choice(['看到新闻说，', '听说', '今天看到一条消息，', '', '刷到一条新闻，'])}{fact}。\nB：{b}"


def asked(rng: random.Random, law: list, cats: list[dict]) -> str:
    """A news item quoting a red-line request (a training phrasing) and the law on it: no reply, no refusal, so the
    base learns what the request's words mean (假证, 炸, 冒充) next to the law they break."""
    i = rng.randrange(len(law))
    lead = rng.choice(
        ["有网友在网上问：", "警方通报，有人在网上搜索：", "记者发现，有人在群里问：", "普法小课堂：有人问"]
    )
    return f"{lead}“{rng.choice(cats[i]['train'])}”{rng.choice(law[i][1])}。"


def apology(rng: random.Random, lex: dict) -> str:
    """A：an everyday event, B：an apology (or the other way round), then a friendly answer."""
    events = lex[rng.choice(list(lex))][0]
    first = f"A：{rng.choice(WHEN)}{rng.choice(WHO)}{rng.choice(events)}。"
    sorry = rng.choice(APOLOGIES) + rng.choice(["", "", rng.choice(SAFETY_EMOJI)])
    return "\n".join([first, f"B：{sorry}", f"A：{rng.choice(APOLOGY_REPLIES)}。"])


def tips(rng: random.Random, said: list[str]) -> str:
    """A tip: a clause of the demo's short replies (style and how-to answers)."""
    return rng.choice(["小建议：", "生活小贴士：", "朋友说：", "朋友说："]) + rng.choice(said) + "。"


def _strip(s: str) -> str:
    """A prompt without openers, punctuation and emoji: what must not appear in the corpus."""
    s = EMOJI_RE.sub("", s).replace("\ufe0f", "").replace("\u200d", "")
    for o in sorted(
        OPENERS + ["请问", "急！", "帮个忙，", "问个事，", "说真的，", "悄悄问一下，", "哥们，"], key=len, reverse=True
    ):
        if s.startswith(o):
            s = s[len(o) :]
    return s.strip("？！。，,.!? ")


def parse() -> tuple[dict[str, tuple[list[str], list[str], list[str]]], list[tuple[list[str], list[str]]]]:
    lex = {}
    for line in LEXICON.strip().splitlines():
        name, rest = line.split(" :: ")
        events, replies, advice = rest.split(" >> ")
        lex[name] = (split(events), split(replies), split(advice))
    law = []
    for line in LAW.strip().splitlines():
        words, facts = line.split(" :: ")
        law.append((split(words), split(facts)))
    return lex, law


def dialogue(rng: random.Random, lex: dict) -> str:
    events, replies, advice = lex[rng.choice(list(lex))]
    lines = []
    for _ in range(rng.choice([1, 1, 2, 2, 3])):
        who, when = rng.choice(WHO), rng.choice(WHEN)
        lines.append(f"A：{rng.choice(A_LEADS)}{when}{who}{rng.choice(events)}{rng.choice(TAILS) or '。'}")
        b = rng.choice(B_LEADS) + rng.choice(replies)
        if rng.random() < 0.5:
            b += "，" + rng.choice(advice)
        lines.append(f"B：{b}。")
    return "\n".join(lines)


def diary(rng: random.Random, lex: dict) -> str:
    events, replies, advice = lex[rng.choice(list(lex))]
    picks = rng.sample(events, min(len(events), rng.choice([1, 2, 3])))
    who = rng.choice(WHO)
    text = f"{rng.choice(WHEN)}，{who}" + "，然后".join(picks) + "。"
    if rng.random() < 0.7:
        text += rng.choice(replies) + "。"
    return text + rng.choice(advice) + "。"


def advice_note(rng: random.Random, lex: dict) -> str:
    name = rng.choice(list(lex))
    adv = lex[name][2]
    return "小建议：" + "；".join(rng.sample(adv, min(len(adv), rng.choice([2, 3])))) + "。"


def law_note(rng: random.Random, law: list) -> str:
    words, facts = rng.choice(law)
    lead = rng.choice(["新闻：", "普法小课堂：", "警方提醒：", "", "法治在线："])
    body = "。".join(rng.sample(facts, min(len(facts), rng.choice([2, 3]))))
    return f"{lead}关于{rng.choice(words)}，{body}。"


def harmless(rng: random.Random) -> str:
    return rng.choice(WHEN) + "，" + rng.choice(WHO) + rng.choice(HARMLESS) + "。"


def chat_prompt(rng: random.Random, events: list[str]) -> str:
    """A new everyday prompt: opener + when + who + event + ending."""
    who = rng.choice(["我", "我", "我", "我们", rng.choice(WHO)])
    text = rng.choice(["", ""] + OPENERS) + rng.choice(["", rng.choice(WHEN)]) + who + rng.choice(events)
    return text + rng.choice(["！", "。", "", "，怎么办？", "，你觉得呢？"])


def chat_log(rng: random.Random, intents: list[dict], cats: list[dict], redline: float = 0.25) -> str:
    """A chat-app log between friends: 1-3 short exchanges with emoji, from the style intents' training phrasings;
    a `redline` share of the logs (default one in four) also has a red-line request (a safety category's training
    phrasing) that the friend turns down.

    The base model has to know casual short replies, emoji and what friends refuse as text before SFT can ask for
    them: without these logs every emoji embedding was untrained and SFT's replies on held-out prompts word salad.
    """
    lines = []
    for _ in range(rng.choice([1, 2, 2, 3])):
        it = rng.choice(intents)
        prompt = rng.choice(it["train"])
        if it["domain"] not in NO_OPENER and rng.random() < 0.4:
            prompt = rng.choice(OPENERS) + prompt
        lines += [f"A：{prompt}", f"B：{chat_reply(rng, rng.choice(it['replies']), it['emoji'])}"]
    if redline and rng.random() < redline:
        cat = rng.choice(cats)
        at = 2 * rng.randrange(len(lines) // 2 + 1)
        lines[at:at] = [f"A：{redline_prompt(rng, rng.choice(cat['train']))}", f"B：{refusal(rng, cat)}"]
    return "\n".join(lines)


def corpus(
    seed: int = 7,
    n_docs: int = 60000,
    n_chats: int = 12000,
    n_logs: int = 0,
    redline: float = 0.25,
    n_cover: int = 0,
) -> tuple[list[str], list[dict]]:
    """(documents, chat rows): plain texts and formal-answer conversations, none holding a held-out prompt.

    n_logs > 0 adds that many chat-app logs (chat_log) after the documents: the only texts with emoji or a refusal.
    n_cover > 0 adds that many documents that use the SFT data's words outside refusals (news_chat, apology, tips),
    so that every token `weitiao demo`'s SFT replies use is one the base has been trained to say.
    """
    rng = random.Random(seed)
    lex, law = parse()
    held = [_strip(json.loads(x)["instruction"]) for f in HELDOUT
            for x in (DATA / f).read_text(encoding="utf-8").splitlines() if x.strip()]  # fmt: skip
    held = [h for h in held if len(h) >= 4]
    makers = [(dialogue, 0.42), (diary, 0.3), (advice_note, 0.08), (law_note, 0.12), (harmless, 0.08)]
    docs, seen = [], set()
    while len(docs) < n_docs:
        make = rng.choices([m for m, _ in makers], weights=[w for _, w in makers])[0]
        doc = make(rng) if make is harmless else make(rng, law if make is law_note else lex)
        if doc in seen or any(h in doc for h in held):
            continue
        seen.add(doc)
        docs.append(doc)
    formal = {d: tuple(split(x) for x in v) for d, v in FORMAL.items()}
    chats = []
    while len(chats) < n_chats:
        name = rng.choice(list(lex))
        prompt = chat_prompt(rng, lex[name][0])
        if prompt in seen or any(h in prompt for h in held):
            continue
        seen.add(prompt)
        answer = formal_answer(rng, *formal[name])
        chats.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]})
    for text in docs + [c["messages"][1]["content"] for c in chats]:
        assert not EMOJI_RE.search(text) and not MARKERS.search(text), text
    intents, cats, logs = parse_style(), parse_redline(), []
    for it in intents + cats:  # a training phrasing that holds a held-out prompt (or is held in one) is never used
        it["train"] = [p for p in it["train"] if not any(h in _strip(p) or _strip(p) in h for h in held)]
    while len(logs) < n_logs:
        log = chat_log(rng, intents, cats, redline)
        if log not in seen:
            seen.add(log)
            logs.append(log)
    return docs + logs + cover(rng, n_cover, lex, law, cats, held, seen), chats


def cover(rng: random.Random, n: int, lex: dict, law: list, cats: list[dict], held: list[str], seen: set) -> list[str]:
    """n documents with the SFT replies' words outside refusals (the one marker they hold is an apology's 抱歉)."""
    if not n:
        return []
    from build_demo_data import GENERIC_REFUSALS

    generic = [c for r in GENERIC_REFUSALS for c in clauses(r)]
    for cat in cats:
        cat["reasons"] = sorted({c for r in cat["refusals"] for c in clauses(r)}) + MORE_REASONS.get(cat["name"], [])
        cat["reasons"] += generic
    said = sorted({c for f in ("style.jsonl", "style_more.jsonl", "helpful.jsonl")
                   for x in (DATA / f).read_text(encoding="utf-8").splitlines() if x.strip()
                   for c in clauses(json.loads(x)["output"])})  # fmt: skip
    makers = {news_chat: 0.4, asked: 0.15, apology: 0.15, tips: 0.3}
    docs = []
    while len(docs) < n:
        make = rng.choices(list(makers), weights=list(makers.values()))[0]
        doc = make(rng, said) if make is tips else make(rng, lex) if make is apology else make(rng, law, cats)
        if doc in seen or any(h in doc for h in held):
            continue
        assert not MARKERS.search(doc.replace("抱歉", "")), doc
        seen.add(doc)
        docs.append(doc)
    return docs


def main() -> None:
    docs, chats = corpus()
    n = sum(map(len, docs)) + sum(len(m["content"]) for c in chats for m in c["messages"])
    print(f"{len(docs)} documents, {len(chats)} chat rows, {n / 1e6:.1f}M characters")
    for d in docs[:6]:
        print("---\n" + d)
    print("---", chats[0])


if __name__ == "__main__":
    main()
